"""The real-scale launch on CPU: DeepSpeed ZeRO-2 and ZeRO-3 through the real ``accelerate launch`` with 2
processes and the shipped DeepSpeed files unmodified, on the tiny model (Qwen2.5-VL's real config layout:
``hidden_size`` only in ``text_config``), in the form of the 3B recipe: bf16, gradient checkpointing, KL to a
frozen reference, an entropy term, length-bucketed micro-batches.

What each test pins (issue 12, findings 4-9):

* the launch file is honoured (DeepSpeed really engaged, said so in ``run_info.json``) or refused with a
  clear error; the "auto" bucket sizes come from ``text_config`` (4);
* the reference works under ZeRO-3 (5): its log-probs equal the policy's at step 1, and its KL is the plain
  run's at step 2;
* every collective of the trainer gets tensors on ``accelerator.device`` (6), spied on with
  ``tests/collective_spy.py`` (NCCL's rule, which gloo does not enforce);
* gradient checkpointing recomputes (7); gradients are accumulated and reduced in fp32 (8, ``run_info``);
* length buckets give the processes different micro-batch counts and ZeRO-3 still finishes (9): a hang fails
  the test at its timeout.

Tolerances: DeepSpeed computes with bf16 weights, the plain run with fp32 weights under bf16 autocast (embedding
lookups, norms and the residual stream stay fp32). Step 1 therefore agrees to bf16 rounding, not exactly:
loss and entropy to 1e-4 relative, the gradient norm to 2 %, and AdamW's first update (each weight moves by about
lr) points the same way: cosine similarity > 0.99 between the plain run's update and DeepSpeed's (whose fp32
masters start from the initial fp32 weights and are what its checkpoints hold). From step 2 the runs train different bf16-rounded weights: the
KL to the reference only has to agree within a factor of 3.
"""

import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import grey_image, tiny_overrides
from safetensors.torch import load_file

from ocean_lib.base.config import load_config, save_config
from ocean_lib.base.io import read_jsonl
from ocean_lib.base.run_dir import RunDir
from ocean_lib.data import ImageRef, read_records, write_records
from ocean_lib.training import launch
from ocean_lib.training.batch import encode_prompts
from ocean_lib.training.forward import pack_micro_batches
from ocean_lib.training.models import load_policy
from ocean_lib.training.run_state import Schedule
from ocean_lib.training.trainer import prompt_of, train

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
HANG_TIMEOUT_S = 600  # a run takes about a minute on 2 busy cores; a hung collective would wait forever

RECIPE_FORM = [
    "model.train_precision=bfloat16",
    "model.gradient_checkpointing=true",
    "algorithm.kl_coef=0.001",
    "algorithm.entropy_coef=0.1",  # a gradient even when every group's rewards are equal (random tiny model)
]


def _config(tiny_model_dir, mini_data_dir, root, name, *extra):
    return load_config(
        None, [*tiny_overrides(tiny_model_dir, mini_data_dir, root, name), *RECIPE_FORM, *extra]
    )


@pytest.fixture(scope="module")
def plain_run(tiny_model_dir, mini_data_dir, tmp_path_factory) -> RunDir:
    """The reference: one process, no DeepSpeed, fp32 weights with bf16 autocast (launched: accelerate's state is
    process-wide, and this run's bf16 would clash with the fp32 runs of other tests in the test process)."""
    root = tmp_path_factory.mktemp("plain")
    cfg = _config(tiny_model_dir, mini_data_dir, root, "plain")
    save_config(cfg, root / "params.yaml")
    launch.train(root / "params.yaml", timeout_s=HANG_TIMEOUT_S)
    return RunDir(cfg.run_dir)


def _uneven_budget(cfg) -> int:
    """A ``train.micro_batch_tokens`` with which the two processes' step-1 sequences pack into different numbers
    of micro-batches (each completion counted at max_new_tokens: a random tiny model rarely samples its end token;
    groups kept together, prompts counted once, as the trainer packs under prompt-once), so that ZeRO-3 needs
    filler passes."""
    records = [r for path in cfg.data.train_files for r in read_records(path, cfg.data)]
    schedule, processor = Schedule(len(records), cfg), load_policy(cfg.model.name_or_path)[1]
    ranks = []
    for rank in (0, 1):
        prompts = [prompt_of(records[i], cfg)[0] for i in schedule.indices(1, rank, 2)]
        prompt_lengths = encode_prompts(processor, prompts)["attention_mask"].sum(-1).tolist()
        n = cfg.rollout.n
        ranks.append(
            (
                [length for length in prompt_lengths for _ in range(n)],
                [cfg.rollout.max_new_tokens] * (len(prompt_lengths) * n),
                [k for k in range(len(prompt_lengths)) for _ in range(n)],
            )
        )
    shortest = min(min(prompts) + min(completions) for prompts, completions, _ in ranks)
    longest = max(max(prompts) + max(completions) for prompts, completions, _ in ranks)
    for budget in range(shortest, 8 * longest):
        counts = {
            len(pack_micro_batches(prompts, completions, cfg.train.micro_batch_size, budget, groups))
            for prompts, completions, groups in ranks
        }
        if len(counts) == 2:
            return budget
    raise AssertionError(f"no token budget packs the two processes' sequences unevenly: {ranks}")


def _launch_spied(cfg, tmp_path, monkeypatch, topology) -> dict[str, dict]:
    """Launch ``cfg`` through the real ``accelerate launch`` with the collective spy in every process."""
    spy = tmp_path / "spy"
    spy.mkdir()
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys
            if os.environ.get("COLLECTIVE_SPY_DIR"):
                sys.path.insert(0, {str(TESTS)!r})
                import collective_spy
                collective_spy.install(os.environ["COLLECTIVE_SPY_DIR"])
            """
        )
    )
    monkeypatch.setenv("COLLECTIVE_SPY_DIR", str(spy))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    monkeypatch.chdir(
        REPO
    )  # the accelerate config files name their DeepSpeed JSON relative to the repository
    params = tmp_path / "params.yaml"
    save_config(cfg, params)
    launch.train(params, topology=topology, timeout_s=HANG_TIMEOUT_S)
    return {path.stem: json.loads(path.read_text()) for path in spy.glob("rank*.json")}


def _update_cosine(start: Path, plain: Path, deepspeed: Path) -> float:
    """Cosine similarity of the two runs' weight updates (all tensors flattened into one vector)."""
    weights = [load_policy(str(path))[0].state_dict() for path in (start, plain, deepspeed)]
    a = torch.cat([(weights[1][k] - weights[0][k]).flatten() for k in weights[0]])
    b = torch.cat([(weights[2][k] - weights[0][k]).flatten() for k in weights[0]])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v for path in sorted(directory.glob("*.safetensors")) for k, v in load_file(path).items()}


@pytest.mark.slow
def test_a_deepspeed_stage_saves_its_fp32_masters_and_the_next_stage_starts_from_them(
    tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    """DeepSpeed (bf16) keeps the trained weights in its fp32 masters; its module holds their bf16 rounding, a
    step of 2^-8 of a weight, many lr-1e-6 updates. final/ holds the masters, and a stage starting from it (stage
    2 from stage 1) starts its masters from them, not from DeepSpeed's bf16 copy: a first step at lr 0 (verl's
    schedule) leaves them bit for bit."""
    monkeypatch.chdir(REPO)  # the accelerate config names its DeepSpeed JSON relative to the repository
    zero2 = launch.Topology(2, accelerate_config="params/accelerate/single_node_zero2.yaml")
    first = _config(tiny_model_dir, mini_data_dir, tmp_path, "stage1", "train.num_processes=2")
    save_config(first, tmp_path / "stage1.yaml")
    trained = _tensors(launch.train(tmp_path / "stage1.yaml", topology=zero2, timeout_s=HANG_TIMEOUT_S))
    off_grid = [k for k, v in trained.items() if not torch.equal(v, v.bfloat16().float())]
    if "lm_head.weight" in trained:  # tied to the embeddings (as the 3B's): the same master under both names
        assert torch.equal(trained["lm_head.weight"], trained["model.language_model.embed_tokens.weight"])
    assert len(off_grid) > len(trained) // 2  # fp32 values that bf16 cannot hold: the masters, not the module
    second = _config(
        tiny_model_dir, mini_data_dir, tmp_path, "stage2", "train.num_processes=2", "train.max_steps=1",
        f"model.name_or_path={RunDir(first.run_dir).final}", "train.lr_schedule=verl_constant",
    )  # fmt: skip
    save_config(second, tmp_path / "stage2.yaml")
    again = _tensors(launch.train(tmp_path / "stage2.yaml", topology=zero2, timeout_s=HANG_TIMEOUT_S))
    assert RunDir(second.run_dir).read_metrics()[0]["lr"] == 0.0
    assert [k for k in off_grid if not torch.equal(again[k], trained[k])] == []


@pytest.mark.trajectory
@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_zero_on_two_processes_takes_the_plain_step(
    zero, plain_run, tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, f"zero{zero}", "train.num_processes=2")
    budget = _uneven_budget(cfg)  # length buckets: the processes get different micro-batch counts
    # Kept as sampled (train.balance_work off): the filler passes are what this test runs under ZeRO.
    cfg = _config(
        tiny_model_dir, mini_data_dir, tmp_path, f"zero{zero}", f"train.micro_batch_tokens={budget}",
        "train.balance_work=false",
    )  # fmt: skip
    accelerate_config = f"params/accelerate/single_node_zero{zero}.yaml"
    spied = _launch_spied(cfg, tmp_path, monkeypatch, launch.Topology(2, accelerate_config=accelerate_config))
    run = RunDir(cfg.run_dir)

    # DeepSpeed really ran, as the file says, and the run directory says how.
    info = json.loads(run.run_info.read_text())
    assert (info["distributed_type"], info["zero_stage"], info["world_size"]) == ("DEEPSPEED", zero, 2)
    assert (info["backend"], info["weights_dtype"], info["mixed_precision"]) == ("gloo", "bfloat16", "bf16")
    assert (info["grad_accum_dtype"], info["communication_data_type"]) == ("fp32", "fp32")
    assert info["gradient_checkpointing"] and info["training_mode"]
    assert info["reference"] == "deepspeed_zero3"
    assert info["versions"]["deepspeed"] and info["deepspeed_config_file"].endswith(f"ds_zero{zero}.json")

    # Both runs trained on the same completions (sampling is seeded per prompt, whatever the process count).
    def completions(r):
        return sorted(
            (row["prompt_id"], row["completion"]) for row in read_jsonl(r.rollouts) if row["step"] == 1
        )

    assert completions(run) == completions(plain_run)

    plain, ours = plain_run.read_metrics(), run.read_metrics()
    for key in ("loss/total", "entropy/mean"):
        assert ours[0][key] == pytest.approx(plain[0][key], rel=1e-4), key
    assert ours[0]["grad/norm"] == pytest.approx(plain[0]["grad/norm"], rel=2e-2)
    # The reference (a ZeRO-3 engine, sharded over the processes) computes what the policy computes at step 1...
    assert ours[0]["kl/mean"] == pytest.approx(0.0, abs=1e-6)
    # ... and is still the initial policy once the policy has moved.
    assert plain[1]["kl/mean"] / 3 < ours[1]["kl/mean"] < plain[1]["kl/mean"] * 3
    assert _update_cosine(tiny_model_dir, plain_run.checkpoint(1), run.checkpoint(1)) > 0.99

    # Length buckets gave the processes different micro-batch counts (fillers ran), and the run finished.
    assert sum(m["micro_batch/filler_passes"] for m in ours) > 0
    assert run.is_finished()

    # Every collective of the trainer received tensors on accelerator.device.
    assert sorted(spied) == ["rank0", "rank1"]
    for rank, report in spied.items():
        assert report["checked"].get("all_reduce", 0) > 0, rank
        assert report["violations"] == [], (rank, report["violations"][:3])
        # Rollout rows travel to rank 0 only, which alone writes rollouts.jsonl: one gather per step, no
        # all-gather of every rank's completions to every rank.
        from_trainer = {
            k: v for k, v in report["objects"].items() if k.split(" from ")[1].startswith("trainer:")
        }
        assert from_trainer == {"gather_object from trainer:_rollouts_to_main": len(ours)}, (
            rank,
            from_trainer,
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_machines_share_the_run_directory_and_another_run_is_refused(
    tiny_model_dir, mini_data_dir, tmp_path
):
    """``scripts/slurm_multinode.sh``'s form on localhost: one ``launch`` per machine, the shipped multi-node
    ZeRO-3 file, one process per machine. Each machine's launcher holds its own lock, keyed by the run; another
    run (another machine count, or one machine) is refused while they train."""
    cfg = load_config(None, [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path, "two_machines")])
    params = tmp_path / "params.yaml"
    save_config(cfg, params)
    run, port = RunDir(cfg.run_dir), _free_port()

    def launch_machine(rank: int, machines: int = 2, *extra: str, **kwargs) -> subprocess.Popen:
        command = [sys.executable, "-m", "ocean_lib", "launch", "--params", str(params), *extra]
        command += ["--num-processes", "1", "--num-machines", str(machines), "--machine-rank", str(rank)]
        command += ["--main-process-ip", "127.0.0.1", "--main-process-port", str(port)]
        command += ["--accelerate-config", "params/accelerate/multi_node_zero3.yaml"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.Popen(command, cwd=REPO, env=env, text=True, stderr=subprocess.PIPE, **kwargs)

    machines = [launch_machine(0, stdout=subprocess.DEVNULL), launch_machine(1, stdout=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 120
        while not ((run.path / ".lock").exists() and (run.path / ".lock.machine-1").exists()):
            ended = [m.stderr.read()[-2000:] for m in machines if m.poll() is not None]
            assert not ended, ended
            assert time.monotonic() < deadline
            time.sleep(0.1)
        other_run = launch_machine(3, 4, "--set", "train.lr=2e-3", stdout=subprocess.DEVNULL)
        one_machine = subprocess.run(
            [sys.executable, "-m", "ocean_lib", "launch", "--params", str(params), "--set", "train.lr=2e-3"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        for refused in (other_run.communicate(timeout=120)[1], one_machine.stderr):
            assert f"error: {run.path} is in use: another training run is writing there" in refused, refused
        assert other_run.returncode == one_machine.returncode == 1
        for machine in machines:
            assert machine.wait(timeout=HANG_TIMEOUT_S) == 0, machine.communicate()[1][-3000:]
    finally:
        for machine in machines:
            machine.kill()
    assert run.is_finished() and [row["step"] for row in run.read_metrics()] == [1, 2]
    info = json.loads(run.run_info.read_text())
    assert (info["world_size"], info["zero_stage"], info["processes_per_machine"]) == (2, 3, 1)
    assert info["threads_per_process"] == os.cpu_count()  # this machine's one process has all its cores
    # one log per machine, each its own processes' output
    assert run.log.is_file() and run.log_of(1).is_file() and run.log.read_text() != run.log_of(1).read_text()


def test_the_collective_spy_flags_a_host_tensor_and_passes_a_device_tensor(tmp_path):
    """The spy's negative control, one gloo process: what NCCL would reject is reported, the rest is not."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        import collective_spy
        collective_spy.install({str(tmp_path)!r})
        import torch, torch.distributed as dist
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29731")
        dist.init_process_group("gloo", rank=0, world_size=1)
        device = torch.device(os.environ["ACCELERATE_TORCH_DEVICE"])
        counts = torch.ones(3).sum()                              # made on the host
        dist.all_reduce(counts)                                   # NCCL: error
        dist.all_reduce(counts.to(device))                        # moved first: fine
        dist.all_reduce(torch.tensor([1.0, 2.0], device=device))  # made on the accelerator: fine
        dist.all_reduce(torch.ones(2, device=device) * counts)    # a host scalar times a device tensor: fine
        dist.all_gather_object([None], {{"any": "object"}})        # torch picks the device itself
        dist.destroy_process_group()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["checked"] == {"all_reduce": 4}
    assert [v["collective"] for v in report["violations"]] == ["all_reduce"]
    line = (
        script.splitlines().index("dist.all_reduce(counts)                                   # NCCL: error")
        + 1
    )
    assert report["violations"][0]["stack"][-1].startswith(f"<string>:{line} ")


def test_a_launch_file_that_cannot_be_honoured_is_an_error(
    tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    """A DeepSpeed JSON that pins bf16 on while the params say float32: refused, naming both, before any
    training (the shipped JSONs say "auto" and follow the params)."""
    cfg = load_config(
        None, [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path), "model.train_precision=float32"]
    )
    params = tmp_path / "params.yaml"
    save_config(cfg, params)
    ds = json.loads((REPO / "params/accelerate/ds_zero2.json").read_text())
    ds["bf16"] = {"enabled": True}
    (tmp_path / "ds_bf16.json").write_text(json.dumps(ds))
    shipped = (REPO / "params/accelerate/single_node_zero2.yaml").read_text()
    (tmp_path / "zero2_bf16.yaml").write_text(
        shipped.replace("params/accelerate/ds_zero2.json", str(tmp_path / "ds_bf16.json"))
    )
    monkeypatch.chdir(REPO)
    topology = launch.Topology(1, accelerate_config=str(tmp_path / "zero2_bf16.yaml"))
    with pytest.raises(
        launch.LaunchError, match=r"ds_bf16.json has bf16.enabled=True but model.train_precision=float32"
    ):
        launch.train(params, topology=topology, timeout_s=HANG_TIMEOUT_S)
    assert not RunDir(cfg.run_dir).metrics.exists()


def test_gradient_checkpointing_recomputes_the_decoder_layers_in_backward(
    tiny_model_dir, mini_data_dir, tmp_path
):
    """transformers recomputes checkpointed layers only in training mode, and from_pretrained returns eval mode:
    the trainer must switch the policy to training mode. Counted: text attention modules run during backward
    (transformers checkpoints a decoder layer's ``forward``, so hooks on the layer itself never see the
    recomputation; its submodules are called again)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLAttention

    recomputed = {}

    def count(module, args, output):
        # -1 outside backward (a private torch call; torch.utils.checkpoint relies on it the same way)
        if isinstance(module, Qwen2_5_VLAttention) and torch._C._current_graph_task_id() != -1:
            recomputed[key] = recomputed.get(key, 0) + 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        for key in (True, False):
            cfg = load_config(
                None,
                [
                    *tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path, f"checkpointing_{key}"),
                    f"model.gradient_checkpointing={key}",
                    "train.max_steps=1",
                ],
            )
            train(cfg)
            recomputed.setdefault(key, 0)
    finally:
        handle.remove()
    metrics = RunDir(cfg.run_dir.parent / "checkpointing_True").read_metrics()[0]
    layers = load_policy(str(tiny_model_dir))[0].config.get_text_config().num_hidden_layers
    # Each training forward's every decoder layer runs once more in backward (two forwards per micro-batch: the
    # prompts', then the completions'); without checkpointing never.
    assert metrics["micro_batch/prompt_once"] == 1.0
    assert recomputed == {True: 2 * int(metrics["micro_batch/count"]) * layers, False: 0}


def _launch_variants(tmp_path, monkeypatch, spy: str, zero: int, variants: dict) -> tuple[dict, dict]:
    """One launch per variant (key -> its config) on 2 processes under ZeRO-``zero`` through the real launcher,
    every process running ``spy`` as its ``sitecustomize`` with ``SPY_DIR`` a directory of the variant's own;
    returns each variant's run and what its processes' spies wrote there (JSON files)."""
    monkeypatch.chdir(
        REPO
    )  # the accelerate config files name their DeepSpeed JSON relative to the repository
    (tmp_path / "sitecustomize.py").write_text(spy)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    topology = launch.Topology(2, accelerate_config=f"params/accelerate/single_node_zero{zero}.yaml")
    runs, spied = {}, {}
    for key, cfg in variants.items():
        params, reports = tmp_path / f"{cfg.logging.run_name}.yaml", tmp_path / f"spy_{cfg.logging.run_name}"
        save_config(cfg, params)
        reports.mkdir()
        monkeypatch.setenv("SPY_DIR", str(reports))
        launch.train(params, topology=topology, timeout_s=HANG_TIMEOUT_S)
        runs[key] = RunDir(cfg.run_dir)
        spied[key] = [json.loads(path.read_text()) for path in sorted(reports.glob("*.json"))]
    return runs, spied


# Each process of a launch records the batch size of every language-model forward run with gradients (the
# training forwards; generation, reference and old log-probs run without) and writes them at exit.
TEXT_FORWARD_SPY = """
import atexit, json, os
if os.environ.get("SPY_DIR"):
    import torch
    seen = []

    def record(module, _args, output):
        if type(module).__name__ == "Qwen2_5_VLTextModel" and torch.is_grad_enabled():
            seen.append(output.last_hidden_state.shape[0])

    torch.nn.modules.module.register_module_forward_hook(record)
    path = os.path.join(os.environ["SPY_DIR"], f"{os.getpid()}.json")
    atexit.register(lambda: seen and open(path, "w").write(json.dumps(seen)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_prompt_once_under_zero_takes_the_step_of_the_repeated_prompts(
    zero, tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    """Prompt-once (each prompt and its images run once per group, ``forward._hidden_running_prompts_once``) in
    the form of the 3B recipe under ZeRO-2/3 on 2 processes: one step whose training, reference and old-log-prob
    forwards all run each prompt once (two updates per batch: the second one's ratio reads the old log-probs and
    its KL the moved policy against the reference), against the same step with every row running its prompt.
    fp32 weights, so that the two agree to float rounding. The prompts' pass runs the module inside the engine,
    the completions' pass the engine: DeepSpeed's ZeRO-3 gathers hang on the module's hooks, so both gather."""
    variants = {
        once: _config(
            tiny_model_dir,
            mini_data_dir,
            tmp_path,
            f"once_{once}",
            "train.num_processes=2",
            "model.train_precision=float32",
            "algorithm.updates_per_batch=2",
            f"train.prompt_once={once}",
            "train.max_steps=1",
        )
        for once in (True, False)
    }
    runs, spied = _launch_variants(tmp_path, monkeypatch, TEXT_FORWARD_SPY, zero, variants)
    forwards = {once: sorted(reports) for once, reports in spied.items()}

    # Each training micro-batch ran its distinct prompts, then its rows (fewer prompts than rows: groups).
    assert len(forwards[True]) == len(forwards[False]) == 2
    for on, off in zip(forwards[True], forwards[False], strict=True):
        assert on[1::2] == off and all(p < r for p, r in zip(on[0::2], on[1::2], strict=True)), (on, off)
    info = {once: json.loads(run.run_info.read_text()) for once, run in runs.items()}
    assert [(i["zero_stage"], i["gradient_checkpointing"], i["prompt_once"]) for i in info.values()] == [
        (zero, True, True),
        (zero, True, False),
    ]
    (on,), (off,) = runs[True].read_metrics(), runs[False].read_metrics()
    assert (on["micro_batch/prompt_once"], off["micro_batch/prompt_once"]) == (1.0, 0.0)
    assert on["kl/mean"] > 1e-6  # the second update's policy has moved away from the reference
    for key in ("loss/total", "grad/norm", "kl/mean", "entropy/mean", "ratio/mean", "ratio/max"):
        assert on[key] == pytest.approx(off[key], rel=1e-5), key
    start = _tensors(tiny_model_dir)
    moved = {once: _tensors(run.final) for once, run in runs.items()}
    assert moved[True].keys() == moved[False].keys() == start.keys()
    for name, weight in moved[False].items():
        step = (weight - start[name]).abs().max()
        assert step > 0 and (moved[True][name] - weight).abs().max() <= 1e-3 * step, name


# Each process of a launch counts the torch.distributed collectives called while the HF sampler generates
# (DeepSpeed's weight gathers included), and its generate calls, and writes both at exit.
SAMPLING_COLLECTIVE_SPY = """
import atexit, functools, json, os, sys
if os.environ.get("SPY_DIR"):
    import torch.distributed as dist
    counts = {"collectives": 0}

    def sampling():
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name == "generate" and frame.f_code.co_filename.endswith("rollout.py"):
                return True
            frame = frame.f_back
        return False

    def counted(original):
        @functools.wraps(original)
        def collective(*args, **kwargs):
            if sampling():
                counts["collectives"] += 1
            return original(*args, **kwargs)
        return collective

    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter_tensor"):
        setattr(dist, name, counted(getattr(dist, name)))

    path = os.path.join(os.environ["SPY_DIR"], f"{os.getpid()}.json")
    atexit.register(lambda: open(path, "w").write(json.dumps(counts)))
"""


@pytest.mark.slow
def test_zero3_sampling_gathers_the_weights_once_and_samples_what_per_layer_gathers_sample(
    tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    """Under ZeRO-3 the HF sampler holds the whole policy while it samples (``rollout.gather_weights``,
    ``distributed.whole_weights_sampling``): the same completions, loss and gradient as the per-layer gathers
    at every decoded token (lockstep), with a handful of collectives per generation instead of hundreds; the
    ZeRO-3 hooks come back for the update (the step trains and the run finishes). fp32, so both agree exactly."""
    variants = {
        gather: _config(
            tiny_model_dir,
            mini_data_dir,
            tmp_path,
            f"gather_{gather}",
            "train.num_processes=2",
            "model.train_precision=float32",
            f"rollout.gather_weights={gather}",
        )
        for gather in (True, False)
    }
    runs, spied = _launch_variants(tmp_path, monkeypatch, SAMPLING_COLLECTIVE_SPY, 3, variants)
    # the launcher's and accelerate's own processes sample nothing: keep the two training processes
    counts = {gather: [c for c in reports if c["collectives"]] for gather, reports in spied.items()}
    steps = variants[True].train.max_steps

    def completions(run):
        return sorted((row["step"], row["prompt_id"], row["completion"]) for row in read_jsonl(run.rollouts))

    assert completions(runs[True]) == completions(runs[False])
    on, off = runs[True].read_metrics(), runs[False].read_metrics()
    for key in ("loss/total", "grad/norm", "kl/mean", "entropy/mean"):
        assert [m[key] for m in on] == pytest.approx([m[key] for m in off], rel=1e-6), key
    assert runs[True].is_finished()
    # Per process and generation: at most one gather per weight tensor, however many tokens are decoded, against
    # each layer's gathers and the lockstep's "all done?" at every decoded token (measured: 83 against 536 in
    # 2 steps of up to 16 tokens with the 44 weight tensors of the test model).
    weights = len(list(load_policy(str(tiny_model_dir))[0].parameters()))
    assert len(counts[True]) == len(counts[False]) == 2
    gathered, per_layer = [c["collectives"] for c in counts[True]], [c["collectives"] for c in counts[False]]
    assert max(gathered) <= steps * weights < min(per_layer), counts


def _images_unevenly_sampled(mini_data_dir, cfg, out: Path) -> Path:
    """Four counting records whose step-1 prompts give process 0 two large pictures (256 image tokens each) and
    process 1 two small ones (4 each): process 0 samples most of the step's work."""
    records = read_records(mini_data_dir / "train" / "counting.parquet", cfg.data)[:4]
    on_first = Schedule(len(records), cfg).indices(1, 0, 2)
    pictures = []
    for k in range(len(records)):
        png = io.BytesIO()
        grey_image(448 if k in on_first else 56, shade=5 * k).save(png, format="PNG")
        pictures.append([ImageRef(bytes=png.getvalue())])
    write_records(
        [dataclasses.replace(r, images=p) for r, p in zip(records, pictures, strict=True)],
        out / "counting.parquet",
    )
    return out


@pytest.mark.slow
def test_balancing_the_work_over_processes_moves_groups_and_keeps_the_step(
    tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    """``train.balance_work`` under ZeRO-3 on 2 processes whose prompts differ tenfold in size: whole groups move
    so that both train on about the same work, the process that sampled little runs no filler pass, and the
    step is the step without moving (loss, gradient norm; fp32), with verl's per-micro-batch token mean (each
    row carries the denominator computed from the rows as sampled)."""
    monkeypatch.chdir(REPO)  # the accelerate config names its DeepSpeed JSON relative to the repository
    zero3 = launch.Topology(2, accelerate_config="params/accelerate/single_node_zero3.yaml")
    runs = {}
    for balance in (True, False):
        common = ["train.num_processes=2", "model.train_precision=float32", "train.max_steps=1"]
        common += ["train.save_every=0", "algorithm.token_mean_over=micro_batch", "algorithm.balance_ranks=2"]
        common += ["train.micro_batch_size=2"]  # verl micro-batches of 2: denominators differ row by row
        cfg = _config(tiny_model_dir, mini_data_dir, tmp_path, f"balance_{balance}", *common)
        data = _images_unevenly_sampled(mini_data_dir, cfg, tmp_path / "data")
        # A budget that one large group fits and two do not: process 0 computes 2 micro-batches as sampled,
        # process 1 its two small groups in 1.
        cfg = _config(
            tiny_model_dir, mini_data_dir, tmp_path, f"balance_{balance}", *common, f"data.train_files=[{data}]",
            "train.micro_batch_tokens=400", f"train.balance_work={balance}",
        )  # fmt: skip
        save_config(cfg, tmp_path / f"balance_{balance}.yaml")
        launch.train(tmp_path / f"balance_{balance}.yaml", topology=zero3, timeout_s=HANG_TIMEOUT_S)
        runs[balance] = RunDir(cfg.run_dir).read_metrics()[0]
    on, off = runs[True], runs[False]
    assert on["micro_batch/moved_groups"] >= 1 and "micro_batch/moved_groups" not in off
    assert on["micro_batch/work_imbalance_before"] > 1.4 and on["micro_batch/work_imbalance"] < 1.15
    assert (on["micro_batch/filler_passes"], off["micro_batch/filler_passes"]) == (0, 1)
    for key in ("loss/total", "grad/norm", "entropy/mean", "reward/overall"):
        assert on[key] == pytest.approx(off[key], rel=1e-5), key


# Each process of a gloo group builds its own step (PROCESSES processes, 3 groups of 2 rows each, prompts and
# images of very different sizes, one group not trained on), balances it with forward.balance_work, and checks
# every row it ends up with against the row as its sampling process built it: tokens, masks, token types,
# sampler log-probs, texts, finished flags, its prompt's image patches, and the per-row values carried along.
BALANCE_WORK_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from ocean_lib.base.schema import TrainConfig
from ocean_lib.training.batch import RolloutBatch, select_images
from ocean_lib.training.forward import balance_work

PAD, N = 0, 2
PROMPTS = [[40, 30, 20], [2, 3, 4], [30, 25, 25]]  # prompt tokens of each process's groups
IMAGES = [[1, 2, 0], [1, 0, 0], [0, 1, 1]]  # images of each group's prompt
COMPLETIONS = [[5, 3, 7, 7, 1, 2], [4, 4, 2, 6, 3, 3], [1, 1, 2, 9, 4, 4]]


def sampled(rank):
    rows, width, widest = len(COMPLETIONS[rank]), max(PROMPTS[rank]), max(COMPLETIONS[rank])
    ids, types = torch.full((rows, width), PAD), torch.zeros(rows, width, dtype=torch.long)
    completion_ids = torch.full((rows, widest), PAD)
    for i, length in enumerate(COMPLETIONS[rank]):
        row, prompt = rank * rows + i, PROMPTS[rank][i // N]
        ids[i, width - prompt :] = 1000 * row + torch.arange(1, prompt + 1)
        types[i, width - prompt : width - prompt + IMAGES[rank][i // N]] = 1
        completion_ids[i, :length] = 1000 * row + 500 + torch.arange(length)
    completion_mask = (completion_ids != PAD).long()
    patches = [torch.full((4, 3), 10.0 * rank + p + k) for p, count in enumerate(IMAGES[rank]) for k in range(count)]
    return RolloutBatch(
        prompt_ids=ids, prompt_mask=(ids != PAD).long(), prompt_token_types=types,
        completion_ids=completion_ids, completion_mask=completion_mask,
        logprobs=-completion_ids.float() / 1e4 * completion_mask,
        pixel_values=torch.cat(patches), image_grid_thw=torch.tensor([[1, 2, 2]] * len(patches)),
        images_per_prompt=IMAGES[rank], n=N, texts=[f"row {rank * rows + i}" for i in range(rows)],
        finished=[(rank * rows + i) % 3 == 0 for i in range(rows)],
    )


dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mine = sampled(rank)
rows = len(mine.texts)
ids = torch.arange(rank * rows, (rank + 1) * rows)
kept = torch.arange(rows - N) if rank == 1 else torch.arange(rows)  # process 1's last group is not trained on
keep = torch.zeros(rows, dtype=torch.bool)
keep[kept] = True
batch, carried, stats = balance_work(
    mine, {"id": ids, "value": ids * 0.5, "keep": keep}, kept, TrainConfig(micro_batch_tokens=1000), True, PAD
)
for r, row in enumerate(carried["id"].tolist()):
    source, i = divmod(row, rows)
    old = sampled(source)
    assert carried["id"][r - r % N] // N == row // N, "a group's rows stay together"
    assert carried["value"][r] == row * 0.5 and carried["keep"][r] == (source != 1 or i < rows - N)
    real, was = batch.prompt_mask[r].bool(), old.prompt_mask[i].bool()
    assert batch.prompt_mask[r, -1] == 1 and torch.equal(batch.prompt_ids[r][real], old.prompt_ids[i][was])
    assert torch.equal(batch.prompt_token_types[r][real], old.prompt_token_types[i][was])
    real, was = batch.completion_mask[r].bool(), old.completion_mask[i].bool()
    assert torch.equal(batch.completion_ids[r][real], old.completion_ids[i][was])
    assert torch.equal(batch.logprobs[r][real], old.logprobs[i][was]) and real[: int(real.sum())].all()
    assert (batch.texts[r], batch.finished[r]) == (old.texts[i], old.finished[i])
    images = select_images(batch.pixel_values, batch.image_grid_thw, batch.images_per_prompt, torch.tensor([r // N]))
    before = select_images(old.pixel_values, old.image_grid_thw, old.images_per_prompt, torch.tensor([i // N]))
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(images, before))
out = {"ids": carried["id"].tolist(), "stats": stats}
open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w").write(json.dumps(out))
dist.destroy_process_group()
"""


def test_balance_work_moves_whole_groups_with_everything_their_rows_hold(tmp_path):
    """Three gloo processes (point-to-point transfers in several directions) run ``forward.balance_work``."""
    script, port = tmp_path / "balance.py", _free_port()
    script.write_text(BALANCE_WORK_SCRIPT)
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "RANK": str(rank),
                "WORLD_SIZE": "3",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in range(3)
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.communicate()[1][-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(3)]
    assert sorted(i for r in results for i in r["ids"]) == list(range(18))  # every row on exactly one process
    stats = results[0]["stats"]
    assert all(r["stats"] == stats for r in results)
    moved = [{i // 6 for i in r["ids"]} - {rank} for rank, r in enumerate(results)]
    assert stats["moved_groups"] >= 2 and sum(map(bool, moved)) >= 2  # transfers into more than one process
    assert stats["work_imbalance"] < 1.1 < stats["work_imbalance_before"]
