"""The launcher's command lines, the accelerate/DeepSpeed config files, and the Slurm example script.

Command lines are checked as lists of strings and by accelerate's own parser (which also merges the config file,
so the command-line values must win); the config files are read with the installed accelerate's classes. The
DeepSpeed files train for real, 2 processes on CPU, in ``tests/test_distributed.py``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin

from ocean_lib.base.config import load_config
from ocean_lib.cli.main import build_parser
from ocean_lib.training.launch import LaunchError, Topology, accelerate_command

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
