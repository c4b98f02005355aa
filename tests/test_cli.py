"""The command line as a user meets it, through real ``python -m ocean_lib`` processes: one message and an exit
code for every error (the traceback behind --debug, or in the run's log), first-run hints, one writer per output,
help texts that say where outputs go, and launch's progress bar."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides
from test_io import hold

from ocean_lib.base.config import load_config, save_config
from ocean_lib.base.run_dir import RunDir
from ocean_lib.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "params" / "ci.yaml")


def ocean_lib(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ocean_lib", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def params_file(tmp_path: Path, overrides: list[str]) -> list[str]:
    """``--params`` of a file holding the defaults with ``overrides`` applied (train and launch need one)."""
    path = tmp_path / "params.yaml"
    save_config(load_config(None, overrides), path)
    return ["--params", str(path)]


def test_a_mistake_is_one_message_with_its_exit_code_and_debug_shows_the_traceback(tmp_path):
    done = ocean_lib("train", "--params", CI, "--set", "trian.lr=1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --set trian.lr=1: unknown key 'trian'; did you mean 'train'?",
        "(exit code 2; add --debug before the command for the traceback)",
    ]
    debug = ocean_lib("--debug", "train", "--params", CI, "--set", "trian.lr=1", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-2].startswith("error: --set trian.lr=1: unknown key")


def test_a_fresh_clone_is_told_how_to_build_the_data_and_model(tmp_path):
    done = ocean_lib("launch", "--params", CI, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not built yet: outputs/ci/data/train, outputs/ci/models/tiny" in done.stderr
    assert f"python -m ocean_lib data build --params {CI}" in done.stderr
    assert f"python -m ocean_lib model build-tiny --params {CI}" in done.stderr
    assert f"python -m ocean_lib reproduce --params {CI}" in done.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was started


def test_a_failing_training_child_is_reported_by_its_own_message(tiny_model_dir, mini_data_dir, tmp_path):
    overrides = [
        *tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path / "runs"),
        "train.prompts_per_step=128",
    ]
    done = ocean_lib("launch", *params_file(tmp_path, overrides), cwd=tmp_path)
    run = RunDir(load_config(None, overrides).run_dir)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert (
        f"error: training run {run.path} failed (exit code 1): 64 training records < train.prompts_per_step=128"
        in (done.stderr)
    )
    assert f"traceback included, is in {run.log}" in done.stderr
    assert "Traceback (most recent call last)" in run.log.read_text()  # the child's, kept in the run's log


def test_a_second_writer_of_a_run_an_evaluation_or_a_study_is_refused(
    tiny_model_dir, mini_data_dir, tmp_path
):
    overrides = tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path / "runs")
    run = RunDir(load_config(None, overrides).run_dir)
    evaluation = tmp_path / "eval" / "tiny"
    study = tmp_path / "study"
    for directory, command in (
        (run.path, ["launch", *params_file(tmp_path, overrides)]),
        (run.path, ["train", *params_file(tmp_path, overrides)]),
        (
            evaluation,
            ["eval", "--model", str(tiny_model_dir), "--set", f"eval.output_dir={tmp_path / 'eval'}"],
        ),
        (study, ["reproduce", "--params", CI, "--set", f"study.output_dir={study}"]),
    ):
        holder = hold(directory)
        try:
            done = ocean_lib(*command, cwd=tmp_path)
        finally:
            holder.kill()
            holder.wait()
        assert done.returncode == 1, (command, done.stderr)
        assert f"error: {directory} is in use" in done.stderr and f"pid {holder.pid}" in done.stderr
        assert "Traceback" not in done.stderr
    assert not run.metrics.exists() and not list(evaluation.glob("*.jsonl"))


def test_help_says_where_outputs_go():
    parser = build_parser()
    top = parser.format_help()
    assert "``" not in top and "where outputs go" in top and "--debug" in top
    commands = parser._subparsers._group_actions[0].choices
    for name in ("train", "launch", "eval", "reproduce"):
        assert "Writes " in commands[name].format_help(), name
    data = commands["data"]._subparsers._group_actions[0].choices
    assert "data.synthetic.output_dir" in data["build"].format_help()


@pytest.mark.slow
def test_launch_shows_steps_of_the_total_and_counts_from_the_checkpoint_on_resume(
    tiny_model_dir, mini_data_dir, tmp_path
):
    overrides = [*tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path / "runs"), "logging.progress=true"]
    first = ocean_lib("launch", *params_file(tmp_path, overrides), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2/2" in first.stderr and "?" not in first.stderr.split("2/2")[0].splitlines()[-1]
    assert "Loading weights" not in first.stderr + first.stdout  # the child's output went to log.txt
    assert "run: trained to step 2 of 2" in first.stdout
    # As if killed after step 2 was logged but before the final weights: resume from the step-1 checkpoint.
    run = RunDir(load_config(None, overrides).run_dir)
    shutil.rmtree(run.final)
    shutil.rmtree(run.checkpoint(2), ignore_errors=True)
    again = ocean_lib("launch", *params_file(tmp_path, overrides), "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1/2" in again.stderr and "2/2" in again.stderr
    assert [row["step"] for row in run.read_metrics()] == [1, 2]


def test_a_file_size_limit_names_the_checkpoint_and_the_limit(tiny_model_dir, mini_data_dir, tmp_path):
    """Files may grow to 1 MiB only (RLIMIT_FSIZE): the weights fit, the optimizer state does not, and torch's own
    error ("unexpected pos ...") would name no file. The limit met is the file size, not the disk's space (the
    message quoted the free space before)."""
    overrides = tiny_overrides(tiny_model_dir, mini_data_dir, tmp_path / "runs")
    params = params_file(tmp_path, overrides)

    def small_files() -> None:
        signal.signal(
            signal.SIGXFSZ, signal.SIG_IGN
        )  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    done = subprocess.run(
        [sys.executable, "-m", "ocean_lib", "train", *params],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=small_files,
    )
    checkpoint = RunDir(load_config(None, overrides).run_dir).checkpoint(1)
    assert done.returncode == 1, done.stderr
    assert (
        f"error: could not write the checkpoint {checkpoint} (a file reached this process's file-size limit, "
        "ulimit -f: 1 MiB)" in done.stderr
    )
    assert "free on its disk" not in done.stderr
    assert "Traceback" not in done.stderr


def test_reproduce_force_refuses_a_directory_that_is_not_a_study(tmp_path):
    from ocean_lib.study.pipeline import STUDY_MARKER, claim_study_dir

    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    for output_dir, cwd in ((thesis, tmp_path), (".", thesis), (tmp_path, thesis)):
        done = ocean_lib(
            "reproduce", "--params", CI, "--set", f"study.output_dir={output_dir}", "--force", cwd=cwd
        )
        # Before: every entry of the directory deleted, the thesis with them, then the study started.
        assert done.returncode == 2, done.stderr
        assert "refusing reproduce --force" in done.stderr
        assert (thesis / "chapter1.tex").read_text() == "years of work"
    assert (
        "is not a study directory"
        in ocean_lib(
            "reproduce", "--params", CI, "--set", f"study.output_dir={thesis}", "--force", cwd=tmp_path
        ).stderr
    )
    # A study marks the directory it starts in (new or empty, or a study made before the marker), and only such a
    # one: --force may empty it.
    (tmp_path / "old_study" / "runs").mkdir(parents=True)
    (tmp_path / "old_study" / "results.md").write_text("| base |")
    for directory in (tmp_path / "study", tmp_path / "old_study", thesis):
        claim_study_dir(directory)
    assert (tmp_path / "study" / STUDY_MARKER).is_file() and (tmp_path / "old_study" / STUDY_MARKER).is_file()
    assert not (thesis / STUDY_MARKER).exists()


def test_deepspeeds_cpu_notice_stays_out_of_outputs_and_logs(tmp_path):
    """Importing the trainer imports accelerate and DeepSpeed, whose "Setting accelerator to CPU" warning went
    into every notebook's output and run log of a machine without a GPU."""
    done = subprocess.run(
        [sys.executable, "-c", "import ocean_lib.training.trainer, deepspeed; print('imported')"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout == "imported\n", done.stderr
    assert "Setting accelerator" not in done.stderr
