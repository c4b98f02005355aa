"""The launcher's command lines, the accelerate/DeepSpeed config files, the Slurm example script, and the life
of the process tree it starts.

Command lines are checked as lists of strings and by accelerate's own parser (which also merges the config file,
so the command-line values must win); the config files are read with the installed accelerate's classes. The
DeepSpeed files train for real, 2 processes on CPU, in ``tests/test_distributed.py`` (two machines on localhost
included). The process tree is driven through real ``python -m ocean_lib launch`` processes: refusals before
accelerate starts, SIGTERM, SIGINT and SIGKILL of the launcher, a killed trainer.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin
from conftest import tiny_overrides
from test_trainer import _comparable, _weights

from ocean_lib.base.config import load_config, save_config
from ocean_lib.base.run_dir import RunDir
from ocean_lib.cli.main import build_parser
from ocean_lib.training import launch
from ocean_lib.training.launch import LaunchError, Topology, accelerate_command
from ocean_lib.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = REPO / "params" / "accelerate"
CONFIGS = sorted(ACCELERATE.glob("*.yaml"))
DEEPSPEED_JSON = sorted(ACCELERATE.glob("ds_*.json"))
PARAMS = "params/qwen25vl_3b_stage1.yaml"
TAIL = ["-m", "ocean_lib", "--debug", "train", "--params", PARAMS]  # --debug: tracebacks reach log.txt
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def _accelerate_args(cmd: list[str]):
    """What `accelerate launch` makes of our command line, config file merged in."""
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    return args


# ----------------------------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------------------------


def test_single_process_command():
    assert accelerate_command(PARAMS, ["train.lr=2e-6"], Topology(), resume=False) == [
        *LAUNCH,
        *["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
        *TAIL,
        *["--set", "train.lr=2e-6", "--set", "train.num_processes=1", "--set", "logging.progress=false"],
    ]


def test_the_command_asks_accelerate_for_the_precision_the_params_ask_for():
    """Without a config file the command names the precision (the trainer refuses a launch that disagrees)."""
    cmd = accelerate_command(PARAMS, [], Topology(), resume=False, mixed_precision="bf16")
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16"
    assert _accelerate_args(cmd).mixed_precision == "bf16"


def test_single_node_multi_gpu_command():
    cmd = accelerate_command(PARAMS, [], Topology(num_processes=8), resume=True)
    assert cmd == [
        *LAUNCH,
        "--multi_gpu",
        *["--num_processes", "8", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
        *TAIL,
        *["--set", "train.num_processes=8", "--set", "logging.progress=false", "--resume"],
    ]
    args = _accelerate_args(cmd)
    assert (args.multi_gpu, args.num_processes, args.use_deepspeed) == (True, 8, False)


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_deepspeed_command_takes_distribution_and_precision_from_the_config_file(zero):
    config = f"params/accelerate/single_node_zero{zero}.yaml"
    cmd = accelerate_command(PARAMS, [], Topology(num_processes=8, accelerate_config=config), resume=False)
    assert cmd == [
        *LAUNCH,
        *["--config_file", config, "--num_processes", "8", "--num_machines", "1"],
        *TAIL,
        *["--set", "train.num_processes=8", "--set", "logging.progress=false"],
    ]
    args = _accelerate_args(cmd)
    assert args.use_deepspeed and not args.multi_gpu
    assert args.deepspeed_config_file == f"params/accelerate/ds_zero{zero}.json"
    assert args.num_processes == 8


def test_multi_node_command_names_rank_and_main_address_and_they_override_the_config_file():
    topology = Topology(
        num_processes=8,
        num_machines=4,
        machine_rank=3,
        main_process_ip="10.1.2.3",
        main_process_port=29501,
        accelerate_config="params/accelerate/multi_node_zero3.yaml",
    )
    cmd = accelerate_command(PARAMS, [], topology, resume=False)
    assert cmd[3:15] == [
        *["--config_file", "params/accelerate/multi_node_zero3.yaml"],
        *["--num_processes", "32", "--num_machines", "4", "--machine_rank", "3"],
        *["--main_process_ip", "10.1.2.3", "--main_process_port", "29501"],
    ]
    assert "--set" in cmd and "train.num_processes=32" in cmd  # the config sees every process, all nodes
    args = _accelerate_args(cmd)  # the file says 2 machines, 16 processes, rank 0, 127.0.0.1:29500
    assert (args.num_machines, args.num_processes, args.machine_rank) == (4, 32, 3)
    assert (args.main_process_ip, args.main_process_port) == ("10.1.2.3", 29501)
    assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
    assert args.training_script_args[:4] == ["--debug", "train", "--params", PARAMS]


def test_multi_node_without_main_address_is_an_error():
    with pytest.raises(LaunchError, match="main_process_ip"):
        accelerate_command(
            PARAMS, [], Topology(num_processes=8, num_machines=2, machine_rank=1), resume=False
        )


def test_the_8_gpu_process_count_is_valid_for_every_real_scale_params_file():
    for name in ("qwen25vl_3b_stage1", "qwen25vl_3b_stage2", "qwen25vl_7b_stage1", "qwen25vl_7b_stage2"):
        for processes in (8, 16, 32):
            assert load_config(REPO / "params" / f"{name}.yaml", [f"train.num_processes={processes}"])


# ----------------------------------------------------------------------------------------------------------------
# Config files, read by the installed accelerate
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_files_parse(path):
    config = load_config_from_file(str(path))
    # 8 GPUs per machine; the first recipe's ZeRO-1 file: 7 training processes (its 8th GPU ran vLLM)
    assert config.num_processes == (7 if "zero1" in path.name else 8) * config.num_machines
    assert config.use_cpu is False
    if config.distributed_type == "DEEPSPEED":
        ds_file = REPO / config.deepspeed_config["deepspeed_config_file"]
        assert ds_file.is_file()
        assert config.mixed_precision in (None, "no")  # bf16 comes from the DeepSpeed JSON, never both
    else:
        assert (config.distributed_type, config.mixed_precision) == ("MULTI_GPU", "bf16")


@pytest.mark.parametrize("path", DEEPSPEED_JSON, ids=lambda p: p.name)
def test_deepspeed_files_parse_as_accelerate_reads_them(path):
    stage = int(path.stem.removeprefix("ds_zero"))
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))
    assert plugin.zero_stage == stage
    assert plugin.hf_ds_config.is_zero3() == (stage == 3)
    # bf16 follows the params' model.train_precision through the precision the trainer gives accelerate
    assert plugin.deepspeed_config["bf16"]["enabled"] == "auto"
    for precision, bf16 in (("bf16", True), ("no", False)):
        filled = DeepSpeedPlugin(hf_ds_config=str(path))
        filled.set_mixed_precision(precision)
        assert filled.deepspeed_config["bf16"]["enabled"] is bf16
    assert plugin.gradient_accumulation_steps == 1  # DeepSpeed must not rescale the trainer's normalised loss
    assert plugin.gradient_clipping == load_config(REPO / PARAMS).train.grad_clip
    assert isinstance(
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"], int
    )  # no dataloader to infer it
    if stage == 3:
        assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    if stage >= 2:  # the verl recipe's files: gradients accumulated and reduced in fp32, not in bf16
        assert plugin.deepspeed_config["data_types"] == {"grad_accum_dtype": "fp32"}
        assert plugin.deepspeed_config["communication_data_type"] == "fp32"


# ----------------------------------------------------------------------------------------------------------------
# The Slurm example
# ----------------------------------------------------------------------------------------------------------------


def test_slurm_script_starts_one_launch_per_node_with_its_rank(tmp_path):
    """Stand-ins for Slurm's commands and for Python record what each node would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n")
    # srun: drop its options, run the command once per node with that node's SLURM_NODEID
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
        'for node in 0 1; do SLURM_NODEID=$node "$@" || exit 1; done\n'
    )
    (bin_dir / "python").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/node$SLURM_NODEID.args\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_NNODES": "2",
        "PYTHON": str(bin_dir / "python"),
    }
    script = REPO / "scripts" / "slurm_multinode.sh"
    subprocess.run(
        ["bash", str(script), PARAMS, "--set", "train.lr=2e-6"], cwd=REPO, env=env, check=True, timeout=60
    )
    for rank in (0, 1):
        argv = (tmp_path / f"node{rank}.args").read_text().splitlines()
        assert argv[:2] == ["-m", "ocean_lib"]
        args = build_parser().parse_args(argv[2:])  # our own CLI accepts what the script passes
        assert (args.command, args.params, args.overrides) == ("launch", PARAMS, ["train.lr=2e-6"])
        assert (args.num_processes, args.num_machines, args.machine_rank) == (8, 2, rank)
        assert (args.main_process_ip, args.main_process_port) == ("gpu-a", 29500)
        assert args.accelerate_config == "params/accelerate/multi_node_zero3.yaml"


# ----------------------------------------------------------------------------------------------------------------
# The process tree: launch -> accelerate launch -> training processes
# ----------------------------------------------------------------------------------------------------------------

# Any process started as `accelerate launch` records that it was and exits: what the launcher refuses must be
# refused before it gets there.
NO_ACCELERATE = textwrap.dedent(
    """
    import os, sys
    if "accelerate.commands.launch" in sys.orig_argv:
        open(os.environ["ACCELERATE_STARTED"], "w").close()
        os._exit(3)
    """
)


def _launch(params: Path, *extra: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m ocean_lib launch`` in the background, its output in files beside ``params``."""
    out = open(params.parent / "launch.out", "w")  # noqa: SIM115 - the process holds it
    err = open(params.parent / "launch.err", "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "ocean_lib", "launch", "--params", str(params), *extra],
        cwd=cwd,
        stdout=out,
        stderr=err,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _stderr(params: Path) -> str:
    return (params.parent / "launch.err").read_text()


def _tree(pid: int) -> list[int]:
    """The PIDs of every descendant of ``pid``."""
    return [found for child in launch._children(pid) for found in (child, *_tree(child))]


def _alive(pid: int) -> bool:
    try:  # "1234 (python) S ...": a zombie (Z) has exited
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for(condition, process: subprocess.Popen, params: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the launch ended first: {_stderr(params)[-3000:]}"
        assert time.monotonic() < deadline, f"waited {timeout} s"
        time.sleep(0.05)


def test_a_launch_is_refused_before_accelerate_starts(tiny_model_dir, mini_data_dir, tmp_path):
    """Each of these waited 35-57 s for accelerate (and the trainer) to start before it was refused."""
    overrides = [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path / "runs"), "train.max_steps=1"]
    cfg = load_config(None, overrides)
    train(cfg)  # a finished run
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_ACCELERATE)
    started = tmp_path / "accelerate_started"
    env = {"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}", "ACCELERATE_STARTED": str(started)}
    missing = tmp_path / "no" / "such" / "train"
    for extra, code, message in (
        ([], 1, f"{cfg.run_dir} already holds a finished run: pass --resume"),
        (
            ["--set", "train.lr=2e-3", "--resume"],
            1,
            "was trained with other settings (train.lr 0.001 -> 0.002)",
        ),
        (
            ["--set", f"data.train_files=[{missing}]", "--set", "logging.run_name=new"],
            1,
            f"{missing}: no such",
        ),
        (["--set", "train.prompts_per_step=0"], 2, "train.prompts_per_step=0 must be >= 1"),
        (
            ["--resume", "--set", "logging.progress=true"],
            0,
            "run: already trained; final weights in",
        ),  # a finished stage is reused at once
    ):
        params = tmp_path / "params.yaml"
        save_config(cfg, params)
        process = _launch(params, *extra, cwd=tmp_path, env=env)
        assert process.wait(timeout=120) == code, _stderr(params)
        output = _stderr(params) + (tmp_path / "launch.out").read_text()
        assert message in output and "Traceback" not in output, output
        assert not started.exists(), (extra, output)


def test_a_lock_left_by_a_killed_op_build_is_refused_before_anything_starts(
    tiny_model_dir, mini_data_dir, tmp_path, monkeypatch
):
    """torch waits forever, silently, on the lock of a JIT build that was killed (CI once hung 4 DeepSpeed runs
    for 15 min each on one). The launcher names the lock instead; a young lock is a build in progress."""
    extensions = tmp_path / "extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    lock = extensions / "deepspeed_shm_comm" / "lock"  # torch's layout under TORCH_EXTENSIONS_DIR
    lock.parent.mkdir(parents=True)
    lock.touch()
    launch.check_build_locks(extensions)  # a build in progress: torch waits for it to end
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    cfg = load_config(None, tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path / "runs"))
    save_config(cfg, tmp_path / "params.yaml")
    started = time.monotonic()
    with pytest.raises(LaunchError, match=f"(?s)killed and left its lock.*{lock} \\(60 min old\\)"):
        launch.train(tmp_path / "params.yaml")
    assert time.monotonic() - started < 30  # refused, not waited for
    assert not RunDir(cfg.run_dir).metrics.exists()


def test_compiled_ops_are_built_in_the_python_environment_unless_the_user_says_where(monkeypatch, tmp_path):
    """Torch's default folder is shared by all of a user's environments: a build killed in one hangs the others."""
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert sys.prefix != sys.base_prefix, "the suite runs in the project's virtual environment"
    assert launch.torch_extensions_dir() == Path(sys.prefix) / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert launch.torch_extensions_dir() == tmp_path


@pytest.mark.slow
def test_a_stopped_or_killed_launcher_takes_its_trainer_with_it_and_the_run_resumes_exactly(
    tiny_model_dir, mini_data_dir, tmp_path
):
    """SIGTERM (a scheduler's cancel) stops training at the end of a step with a checkpoint; SIGKILL ends the
    whole tree at once, so that a resume started right after is the only writer; the resumed run ends with the
    metrics and weights of a run that was never interrupted."""
    steps = ["train.max_steps=8", "train.save_every=1"]
    reference = load_config(
        None, [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path, "reference"), *steps]
    )
    train(reference)
    cfg = load_config(None, [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path, "interrupted"), *steps])
    params = tmp_path / "params.yaml"
    save_config(cfg, params)
    run = RunDir(cfg.run_dir)

    launcher = _launch(params, cwd=tmp_path)
    _wait_for(lambda: len(run.read_metrics()) >= 1, launcher, params)
    tree = _tree(launcher.pid)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=120) == 128 + signal.SIGTERM, _stderr(params)
    stopped = run.read_metrics()[-1]["step"]
    assert f"stopped by SIGTERM; its last checkpoint is step {stopped} " in _stderr(params)
    assert "Traceback" not in _stderr(params)
    assert not [pid for pid in tree if _alive(pid)]

    launcher = _launch(params, "--resume", cwd=tmp_path)
    _wait_for(lambda: run.last_checkpoint()[0] > stopped, launcher, params)
    tree = _tree(launcher.pid)
    assert len(tree) >= 2  # accelerate, the trainer (and its reward workers)
    launcher.kill()
    launcher.wait()
    resumed = _launch(params, "--resume", cwd=tmp_path)  # at once: nothing of the killed tree may write now
    _wait_for(lambda: not [pid for pid in tree if _alive(pid)], resumed, params, timeout=10)
    assert resumed.wait(timeout=300) == 0, _stderr(params)

    rows = run.read_metrics()
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert _comparable(rows) == _comparable(RunDir(reference.run_dir).read_metrics())
    expected, ours = _weights(RunDir(reference.run_dir).final), _weights(run.final)
    assert all(torch.equal(expected[k], ours[k]) for k in expected)


@pytest.mark.slow
def test_an_interrupted_launch_stops_cleanly_and_a_killed_trainer_is_one_line(
    tiny_model_dir, mini_data_dir, tmp_path
):
    """Ctrl-C (or a notebook's interrupt) stops at a step boundary without a thread's traceback; a training process
    killed by a signal (the kernel's out-of-memory killer) is named in one line, not accelerate's traceback."""
    # Far more steps than either launch runs: the launcher passes a signal on within a second, in which an idle
    # machine trains several tiny steps, and a run that finishes first rightly exits 0 (CI once saw 8 steps do so).
    cfg = load_config(
        None,
        [
            *tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path),
            "train.max_steps=200",
            "train.save_every=4",
        ],
    )
    params = tmp_path / "params.yaml"
    save_config(cfg, params)
    run = RunDir(cfg.run_dir)

    launcher = _launch(params, cwd=tmp_path)
    _wait_for(lambda: len(run.read_metrics()) >= 1, launcher, params)
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=120) == 128 + signal.SIGINT, _stderr(params)
    stopped = run.read_metrics()[-1]["step"]
    assert f"stopped by SIGINT; its last checkpoint is step {stopped} " in _stderr(params)
    assert "Traceback" not in _stderr(params) and "closed file" not in _stderr(params)

    launcher = _launch(params, "--resume", cwd=tmp_path)
    _wait_for(lambda: run.read_metrics()[-1]["step"] > stopped, launcher, params)
    (accelerate,) = launch._children(launcher.pid)
    (trainer,) = launch._children(accelerate)
    os.kill(trainer, signal.SIGKILL)
    assert launcher.wait(timeout=120) == 1
    error = [line for line in _stderr(params).splitlines() if line.startswith("error: ")]
    assert error == [
        f"error: training run {run.path} failed (exit code 1): a training process was killed by signal 9 "
        "(SIGKILL) — out of memory?"
    ]
