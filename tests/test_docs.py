"""The docs name what the code has: every `ocean_lib...` name and path in README.md and docs/*.md exists, and the
README's module graph is the one the imports draw."""

import importlib
import re
from pathlib import Path

import pytest
from test_layout import import_graph

import ocean_lib
from ocean_lib.base.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG_SECTIONS = set(RunConfig.__dataclass_fields__)  # `rollout.n` is a knob, not the module rollout
FILE_SUFFIXES = {
    "py",
    "json",
    "jsonl",
    "yaml",
    "md",
    "html",
    "png",
    "csv",
    "txt",
    "ipynb",
}  # `trainer.py`: a file
FOREIGN = {"trainer.n_gpus_per_node", "trainer.nnodes"}  # verl's knobs, quoted where the docs compare recipes


def modules_by_leaf() -> dict[str, list[str]]:
    leaves: dict[str, list[str]] = {}
    for name in import_graph():
        leaves.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return leaves


def resolve(dotted: str) -> bool:
    """Whether ``ocean_lib.a.b.name`` names a module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(found, attr):
                return False
            found = getattr(found, attr)
        return True
    return False


def doc_references(text: str) -> set[str]:
    """Dotted names in backticks that point into ocean_lib: full (`ocean_lib.x.y`) or by module (`forward.f`)."""
    leaves = modules_by_leaf()
    found = set()
    for code in re.findall(r"`([^`\n]+)`", text):
        for name in re.findall(r"\b(?:ocean_lib\.)?[a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+", code):
            head, last = name.split(".")[0], name.rsplit(".", 1)[-1]
            if last in FILE_SUFFIXES or name in FOREIGN:
                continue
            if head == "ocean_lib":
                found.add(name)
            elif head not in CONFIG_SECTIONS and len(leaves.get(head, [])) == 1:
                found.add(leaves[head][0] + name[len(head) :])
    return found


def test_the_resolver_tells_real_names_from_stale_ones():
    assert resolve("ocean_lib.training.grpo.policy_loss") and resolve("ocean_lib.training.forward")
    assert not resolve(
        "ocean_lib.training.forward._logits_running_prompts_once"
    )  # renamed once, docs kept it
    assert not resolve("ocean_lib.trainer.grpo_step")  # before the folder plan
    assert doc_references("see `forward.micro_batches` and `rollout.n`") == {
        "ocean_lib.training.forward.micro_batches"
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_ocean_lib_name_in_the_docs_exists(doc):
    text = doc.read_text()
    missing = sorted(name for name in doc_references(text) if not resolve(name))
    assert not missing, f"{doc.name} names what the code does not have: {missing}"
    paths = set(re.findall(r"\bocean_lib/[\w/]+\.py\b", text))
    assert not [p for p in paths if not (ROOT / p).exists()], f"{doc.name}: missing files"


def readme_groups() -> dict[str, tuple[set[str], set[str]]]:
    """The README's module graph: group -> (its modules, the groups it imports)."""
    block = ROOT.joinpath("README.md").read_text().split("<!-- module graph -->")[1]
    groups = {}
    for line in re.findall(r"^(\w+)\s{2,}(.+)$", block.split("```")[1], re.M):
        name, rest = line
        modules, _, imports = rest.partition("->")
        groups[name] = (
            set(re.findall(r"\w+", modules.split("  ")[0])),
            set(re.findall(r"\w+", imports)) - {"nothing"},
        )
    return groups


def code_groups() -> dict[str, tuple[set[str], set[str]]]:
    graph = import_graph()
    groups = {}
    for group in ocean_lib.FLOORS:
        members = {m for m in graph if m.startswith(f"ocean_lib.{group}.")}
        imported = {t.split(".")[1] for m in members | {f"ocean_lib.{group}"} for t in graph.get(m, ())}
        groups[group] = ({m.split(".")[2] for m in members}, imported - {group})
    return groups


def test_the_readme_module_graph_is_the_code_s():
    assert readme_groups() == code_groups()
