"""Loading a run's config (:mod:`ocean_lib.base.schema`) from ``params/*.yaml``.

A params file may ``extends:`` another (path relative to itself); ``--set a.b=c`` overrides are applied last.
Unknown keys are errors that name the closest valid key, values are checked against the field's type, and
cross-field invariants are checked on load. Nothing is read from environment variables.

The resolved config is saved as ``config.yaml`` beside every run's outputs and loads back equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from ocean_lib.base.schema import ConfigError, RunConfig


def add_params_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The ``--params`` and ``--set`` options every command that loads a config takes."""
    default = "" if required else " (default: built-in defaults)"
    parser.add_argument("--params", required=required, default=None, help=f"params/*.yaml file{default}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=3e-5 (repeatable)",
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a validated RunConfig from a params file (following ``extends:``) and ``a.b=c`` overrides.

    A string value may refer to another string knob as ``${section.key}`` (``${study.output_dir}/data``); it is
    replaced after the overrides are applied, so overriding the referenced knob moves everything that refers to
    it. An error in an override names the ``--set`` it came from, not the params file.
    """
    raw = _read_with_extends(Path(path), seen=()) if path is not None else {}
    origins: dict[str, str] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not of the form section.key=value")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item}: the value is not valid YAML: {error}") from None
        _set_dotted(raw, key.strip(), parsed)
        origins[key.strip()] = f"--set {item}"
    where = str(path) if path is not None else "<defaults>"
    _rename_knobs(raw, where, origins)
    raw = _resolve_references(raw, raw, where)
    cfg = _build(RunConfig, raw, prefix="", where=where, origins=origins).validate()
    for name, stage in cfg.study.stages.items():
        # A stage's knobs are checked now, not when the stage starts: a typo fails before any training.
        stage_raw = _deep_merge({k: v for k, v in raw.items() if k != "study"}, stage.set)
        _rename_knobs(stage_raw, f"{where}, study.stages.{name}.set", {})
        _build(RunConfig, stage_raw, prefix="", where=f"{where}, study.stages.{name}.set").validate()
    return cfg


REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _resolve_references(node: Any, raw: dict[str, Any], where: str) -> Any:
    """``node`` with every ``${section.key}`` in its strings replaced by that knob's value (from ``raw``, else
    its default); the knob must be a string without references of its own."""
    if isinstance(node, dict):
        return {key: _resolve_references(value, raw, where) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_references(value, raw, where) for value in node]
    if not isinstance(node, str):
        return node

    def value_of(match: re.Match[str]) -> str:
        dotted, found = match.group(1), raw
        for part in dotted.split("."):
            found = found.get(part, _MISSING) if isinstance(found, dict) else _MISSING
        if found is _MISSING:
            found = RunConfig()
            for part in dotted.split("."):
                found = getattr(found, part, _MISSING)
        if not isinstance(found, str) or REFERENCE.search(found):
            raise ConfigError(
                f"{where}: {node!r} refers to ${{{dotted}}}, which is not a string knob without references"
            )
        return found

    return REFERENCE.sub(value_of, node)


_MISSING = object()


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from ocean_lib.base.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_changes(
    before: RunConfig, after: RunConfig, relative_to_study: bool = False
) -> dict[str, tuple[Any, Any]]:
    """Every leaf knob whose value differs: dotted name -> (value in ``before``, value in ``after``).

    With ``relative_to_study``, paths under each config's own ``study.output_dir`` are compared relative to it,
    so a study moved (or copied) to another directory has the same settings as where it was.
    """

    def relative(value: Any, root: str) -> Any:
        if isinstance(value, list):
            return [relative(v, root) for v in value]
        if isinstance(value, str) and (value == root or value.startswith(root.rstrip("/") + "/")):
            return "${study.output_dir}" + value[len(root.rstrip("/")) :]
        return value

    def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = leaves(to_dict(before)), leaves(to_dict(after))
    if relative_to_study:
        a = {k: relative(v, before.study.output_dir) for k, v in a.items()}
        b = {k: relative(v, after.study.output_dir) for k, v in b.items()}
    return {key: (a.get(key), b.get(key)) for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


def from_dict(raw: dict[str, Any], where: str = "<dict>") -> RunConfig:
    _rename_knobs(raw, where, {})
    return _build(RunConfig, raw, prefix="", where=where).validate()


RENAMED_KNOBS = {
    "model.dtype": ("model.train_precision", "model.inference_dtype"),
}
"""Knobs that were renamed or split: old dotted name -> the knobs it now sets, each to the old value. Old params
files and saved ``config.yaml`` files keep loading, with a warning that names the new knobs."""


class RenamedKnobWarning(UserWarning):
    """A params file (or ``--set``) used a knob's old name."""


def _rename_knobs(raw: dict[str, Any], where: str, origins: dict[str, str]) -> None:
    for old, new in RENAMED_KNOBS.items():
        section, key = old.split(".")
        if not isinstance(raw.get(section), dict) or key not in raw[section]:
            continue
        value = raw[section].pop(key)
        for name in new:
            raw[section].setdefault(name.split(".")[1], value)
        warnings.warn(
            f"{origins.get(old, where)}: {old} is now {' and '.join(new)} (both set to {value!r}); "
            "use the new names",
            RenamedKnobWarning,
            stacklevel=3,
        )


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' cycle through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _read_with_extends(path.parent / parent, seen + (path,))
    return _deep_merge(base, raw)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}=...: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str, where: str, origins: dict[str, str] | None = None) -> Any:
    """``cls`` from ``raw``; errors name ``where`` (the params file), or the ``--set`` in ``origins`` (dotted key
    -> the override) that set the offending key."""
    origins = origins or {}

    def origin(dotted: str) -> str:
        for key, override in origins.items():
            if key == dotted or key.startswith(dotted + "."):
                return override
        return where

    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin(prefix.rstrip('.'))}: {prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in raw if key not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"{origin(f'{prefix}{key}')}: unknown key '{prefix}{key}'{hint}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, raw[name], f"{prefix}{name}.", where, origins)
        else:
            values[name] = _coerce(raw[name], annotation, f"{prefix}{name}", origin(f"{prefix}{name}"))
    return cls(**values)


def _coerce(value: Any, annotation: Any, name: str, where: str) -> Any:
    """Check (and minimally convert) one value against its field type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{where}: {name} must be {expected}, got {value!r}")

    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(map(repr, args)))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name, where)
    if annotation is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail("a mapping with string keys")
        if dataclasses.is_dataclass(args[1]):
            return {k: _build(args[1], v, prefix=f"{name}.{k}.", where=where) for k, v in value.items()}
        return {k: _coerce(v, args[1], f"{name}.{k}", where) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            fail("a list")
        return [_coerce(v, args[0], f"{name}[{i}]", where) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail("a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    raise ConfigError(f"{where}: {name} has an unsupported type {annotation!r}")  # a bug in this module
