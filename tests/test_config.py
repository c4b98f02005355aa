"""The run config: documented knobs, strict loading, invariants, round-trip."""

from pathlib import Path

import pytest
import yaml

from ocean_lib.base.config import RenamedKnobWarning, config_changes, from_dict, load_config, save_config
from ocean_lib.base.schema import ConfigError, RunConfig, field_docs

ROOT = Path(__file__).parents[1]
PARAMS = sorted((ROOT / "params").glob("**/*.yaml"))
RUN_PARAMS = [p for p in PARAMS if "accelerate" not in p.parts]


def test_every_knob_has_a_help_line():
    docs = field_docs()
    assert len(docs) > 60  # the tree really was walked, sections included
    missing = [name for name, text in docs.items() if not text.strip()]
    assert missing == []


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  warmup_step: 10\n")
    with pytest.raises(
        ConfigError, match=r"unknown key .train.warmup_step.; did you mean .train.warmup_steps."
    ):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'rollout.temprature'.*'rollout.temperature'"):
        load_config(None, ["rollout.temprature=0.5"])


def test_wrong_types_are_rejected_with_the_field_name():
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        load_config(None, ["train.epochs=1.5"])
    with pytest.raises(ConfigError, match="algorithm.loss_agg must be one of"):
        load_config(None, ["algorithm.loss_agg=sum"])
    with pytest.raises(ConfigError, match="data.train_files must be a list"):
        load_config(None, ["data.train_files=a.parquet"])


def test_invariants_name_both_values():
    with pytest.raises(
        ConfigError, match=r"train.prompts_per_step=6 is not divisible by train.num_processes=4"
    ):
        load_config(None, ["train.prompts_per_step=6", "train.num_processes=4"])
    with pytest.raises(ConfigError, match=r"data.min_pixels=10 > data.max_pixels=5"):
        load_config(None, ["data.min_pixels=10", "data.max_pixels=5"])
    with pytest.raises(ConfigError, match=r"rollout.n=1: GRPO needs a group of at least 2"):
        load_config(None, ["rollout.n=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.prompts_per_step=0", "train.prompts_per_step=0 must be >= 1"),
        ("rollout.max_new_tokens=0", "rollout.max_new_tokens=0 must be >= 1"),
        ("train.epochs=0", "train.epochs=0 must be >= 1"),
        ("train.max_steps=-1", r"train.max_steps=-1 must be >= 0 \(0: all epochs\)"),
        ("logging.run_name=", "logging.run_name='' must name a directory of its own"),
        ("logging.run_name=..", "logging.run_name='..' must name a directory of its own"),
    ],
)
def test_values_that_would_fail_late_are_refused_by_name(override, message):
    """Each of these used to pass and then fail in the training process (a ZeroDivisionError after ~40 s, a
    tensor-stack error), train nothing and exit 0, or write the run into its parent directory."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    load_config(None, ["train.max_steps=0"])  # the documented sentinel: all epochs


def test_extends_merges_sections_and_overrides_win(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.001\n  epochs: 3\nrollout:\n  n: 4\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain:\n  lr: 0.002\n")
    cfg = load_config(tmp_path / "child.yaml", ["rollout.n=8"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.rollout.n) == (0.002, 3, 8)
    assert isinstance(cfg.train.lr, float)


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 1e-6\n")  # YAML 1.1 reads this as a string
    assert load_config(path).train.lr == 1e-6


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(
        None, ["train.lr=3e-5", "data.train_files=[a.parquet, b.parquet]", "logging.run_name=x"]
    )
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == 3e-5


def test_defaults_are_valid_and_not_shared_between_instances():
    a, b = RunConfig().validate(), RunConfig()
    a.eval.benchmarks.append("x")
    assert "x" not in b.eval.benchmarks


@pytest.mark.parametrize("path", RUN_PARAMS, ids=lambda p: p.name)
def test_every_params_file_loads(path):
    load_config(path)


def test_a_set_mistake_is_blamed_on_the_set_not_the_params_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set trian\.lr=1: unknown key 'trian'; did you mean 'train'\?"):
        load_config(ROOT / "params" / "ci.yaml", ["trian.lr=1"])
    with pytest.raises(ConfigError, match=r"^--set train\.lr=abc: train\.lr must be a number"):
        load_config(ROOT / "params" / "ci.yaml", ["train.lr=abc"])
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'train.lrr'"):  # the file's own mistake
        load_config(path, ["train.lr=0.1"])


def test_moving_the_study_moves_its_data_model_and_runs(tmp_path):
    """Every path of the miniature's params follows study.output_dir (``${study.output_dir}`` references)."""
    from ocean_lib.study import pipeline

    moved = tmp_path / "elsewhere"
    cfg = load_config(ROOT / "params" / "mini.yaml", [f"study.output_dir={moved}"])
    paths = [cfg.data.synthetic.output_dir, cfg.model.name_or_path, *cfg.data.train_files]
    for stage in cfg.study.stages:
        stage_cfg = load_config(
            ROOT / "params" / "mini.yaml",
            [f"study.output_dir={moved}", *pipeline.stage_overrides(cfg, stage)],
        )
        paths += [stage_cfg.model.name_or_path, *stage_cfg.data.train_files, str(stage_cfg.run_dir)]
    assert all(Path(p).is_relative_to(moved) for p in paths), paths
    # and the default resolves to where the study always was
    default = load_config(ROOT / "params" / "mini.yaml")
    assert (default.data.synthetic.output_dir, default.model.name_or_path) == (
        "outputs/mini/data",
        "outputs/mini/models/tiny",
    )


def test_a_stage_starts_from_the_weights_its_own_set_names_and_may_not_name_two(tmp_path):
    """A stage's own model.name_or_path is its start (it used to be replaced by the params' without a word);
    a stage that also names starts_from is refused, since it can start from one set of weights only."""
    from ocean_lib.study import pipeline

    params = tmp_path / "p.yaml"
    params.write_text(
        f"extends: {ROOT / 'params' / 'mini.yaml'}\n"
        "study:\n  stages:\n"
        "    other_init: {set: {model: {name_or_path: elsewhere/tiny}, train: {max_steps: 3}}}\n"
        "    on_top: {starts_from: other_init}\n"
    )
    cfg = load_config(params, [f"study.output_dir={tmp_path}/study"])
    assert pipeline.start_weights(cfg, "other_init") == "elsewhere/tiny"
    run = load_config(
        params, [f"study.output_dir={tmp_path}/study", *pipeline.stage_overrides(cfg, "other_init")]
    )
    assert run.model.name_or_path == "elsewhere/tiny"
    assert pipeline.start_weights(cfg, "on_top") == str(tmp_path / "study" / "runs" / "other_init" / "final")
    assert pipeline.start_weights(cfg, "warmstart") == cfg.model.name_or_path
    with pytest.raises(
        ConfigError, match=r"study.stages.on_top sets model.name_or_path and starts_from='other_init'"
    ):
        load_config(params, ["study.stages.on_top.set.model.name_or_path=x"])


def test_a_stage_runs_after_the_stage_it_starts_from_whatever_the_written_order(tmp_path):
    """A params file that extends mini.yaml adds its stages after mini.yaml's; a stage they start from still
    runs first (the config holds the stages in run order), and a start that cannot run is refused by name."""
    params = tmp_path / "p.yaml"
    params.write_text(
        f"extends: {ROOT / 'params' / 'mini.yaml'}\n"
        "study:\n  stages:\n"
        "    warmstart: {starts_from: perception}\n"
        "    perception: {set: {train: {max_steps: 3}}}\n"
    )
    cfg = load_config(params)
    assert list(cfg.study.stages) == [
        "perception",
        "warmstart",
        "grpo_text",
        "grpo_vis_stage1",
        "grpo_vis_stage2",
    ]
    assert list(load_config(ROOT / "params" / "mini.yaml").study.stages) == list(cfg.study.stages)[1:]
    with pytest.raises(
        ConfigError, match=r"study.stages.warmstart cannot run: .* warmstart -> 'percept' names no"
    ):
        load_config(params, ["study.stages.warmstart.starts_from=percept"])
    with pytest.raises(ConfigError) as refused:
        load_config(params, ["study.stages.perception.starts_from=grpo_text"])
    cycle = "perception -> grpo_text -> warmstart -> perception goes round in a cycle"
    assert f"study.stages.perception cannot run: its starts_from chain {cycle}" in str(refused.value)
    # a stage downstream of the cycle says where its own chain goes
    assert (
        "study.stages.grpo_vis_stage2 cannot run: its starts_from chain grpo_vis_stage2 -> grpo_vis_stage1 -> "
        in str(refused.value)
    )


def test_references_must_name_a_plain_string_knob(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("logging:\n  output_dir: ${train.lr}/runs\n")
    with pytest.raises(ConfigError, match=r"refers to \$\{train.lr\}"):
        load_config(path)
    path.write_text("logging:\n  output_dir: ${study.output_dir}/runs\n")
    assert load_config(path, ["study.output_dir=/x"]).logging.output_dir == "/x/runs"


def test_config_changes_relative_to_the_study():
    a = load_config(ROOT / "params" / "ci.yaml", ["study.output_dir=/one/study"])
    b = load_config(ROOT / "params" / "ci.yaml", ["study.output_dir=/two/study"])
    assert "model.name_or_path" in config_changes(a, b)
    assert config_changes(a, b, relative_to_study=True) == {}
    c = load_config(ROOT / "params" / "ci.yaml", ["study.output_dir=/two/study", "train.lr=0.5"])
    assert set(config_changes(a, c, relative_to_study=True)) == {"train.lr"}


def test_the_split_model_dtype_still_loads_and_names_its_new_knobs(tmp_path):
    """``model.dtype`` meant the training precision and the frozen copies' dtype at once; an old params file (or a
    run's saved config.yaml) sets both, with a warning naming them and where the old name was."""
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  dtype: bfloat16\n")
    with pytest.warns(
        RenamedKnobWarning, match=r"old.yaml: model.dtype is now model.train_precision and model"
    ):
        cfg = load_config(old)
    assert (cfg.model.train_precision, cfg.model.inference_dtype) == ("bfloat16", "bfloat16")
    with pytest.warns(RenamedKnobWarning, match=r"--set model.dtype=bfloat16: model.dtype is now"):
        assert load_config(None, ["model.dtype=bfloat16"]).model.inference_dtype == "bfloat16"
    old.write_text("model:\n  dtype: bfloat16\n  inference_dtype: float32\n")  # a new name set beside it wins
    with pytest.warns(RenamedKnobWarning):
        cfg = load_config(old)
    assert (cfg.model.train_precision, cfg.model.inference_dtype) == ("bfloat16", "float32")
    with pytest.warns(RenamedKnobWarning, match="model.dtype is now"):
        assert from_dict({"model": {"dtype": "bfloat16"}}).model.train_precision == "bfloat16"
