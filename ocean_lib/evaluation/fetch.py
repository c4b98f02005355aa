"""``python -m ocean_lib data fetch-benchmarks``: download the benchmarks into the layout the registry reads.

With network access every source is downloaded into ``<root>/<benchmark dir>/`` (resumable: a partial file
continues where it stopped; finished files are skipped) and archives are unpacked. Without network it fails at
once with :data:`MANUAL_STEPS`, the same text the README shows. Sources are the locations published by the
benchmarks' authors (and by R1-V, VLM-R1 and Ocean-R1) at the time of writing; if one moved, the error names it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from ocean_lib.data.records import reachable

PROBE_TIMEOUT_S = 5.0
CHUNK = 1 << 20

MANUAL_STEPS = """\
### Getting the benchmarks by hand

`python -m ocean_lib eval` reads each benchmark from `eval.data_root` (default `data/benchmarks`). Put the files
there as below; image paths inside the annotations are looked up under each benchmark's image directory by
their trailing components, so any unpacking that keeps the last folders of the original paths works.

| Benchmark (`--benchmarks` name) | Annotations → where | Images → where |
|---|---|---|
| SuperCLEVR 5k (`superclevr`) | `super_clevr_test_5k.jsonl` from Ocean-R1's evaluation files → `superclevr/` | SuperCLEVR `images.zip` (https://www.cs.jhu.edu/~zhuowan/zhuowan/SuperCLEVR/to_be_released/images.zip) unpacked → `superclevr/images/` |
| SuperCLEVR 200 (`superclevr200`) | R1-V `src/eval/prompts/superclevr_test200_counting_problems.jsonl` → `superclevr/` | as above |
| GeoQA 754 (`geoqa`) | R1-V `src/eval/prompts/geoqa_test_prompts.jsonl` → `geoqa/` | Geo170K images (Hugging Face dataset `Luckyjhg/Geo170K`, `images.zip`) unpacked → `geoqa/Geo170K/` (so that `geoqa/Geo170K/images/test/0.png` exists) |
| GeoQA 740 (`geoqa_parquet`) | Ocean-R1's `geoqa_test.parquet` → `geoqa/` | as above |
| RefCOCO, RefCOCO+, RefCOCOg (`refcoco`, `refcocop`, `refcocog`) | VLM-R1 `rec_jsons_processed.zip` (Hugging Face dataset `omlab/VLM-R1`) unpacked → `rec/` | COCO `train2014.zip` (http://images.cocodataset.org/zips/train2014.zip, 13 GB) unpacked → `coco/train2014/` |
| CV-Bench (`cvbench`) | Hugging Face dataset `nyu-visionx/CV-Bench`: `test_2d.parquet`, `test_3d.parquet` → `cvbench/` | embedded in the parquet files |
| CV-Bench 2,638 (`cvbench_parquet`) | Ocean-R1's `cvbench_test.parquet` → `cvbench/` | CV-Bench images → `cvbench/images/cvbench/` (`<index>.jpg`, as the parquet's paths end) |
| MathVista testmini (`mathvista`) | Hugging Face dataset `AI4Math/MathVista`: `data/testmini-*.parquet` → `mathvista/` | embedded |
| MathVerse testmini (`mathverse`) | Hugging Face dataset `AI4Math/MathVerse`: the `testmini` parquet → `mathverse/` | embedded |
| MathVision (`mathvision`) | Hugging Face dataset `MathLLMs/MathVision`: `data/test-*.parquet` → `mathvision/` | embedded |
| OlympiadBench (`olympiadbench`) | Hugging Face dataset `Hothan/OlympiadBench`: the `OE_MM_*` parquet files → `olympiadbench/` | embedded |
| MMMU validation (`mmmu`) | Hugging Face dataset `MMMU/MMMU`: `<Subject>/validation-*.parquet` → `mmmu/` | embedded |

Check a layout without a GPU: `python -m ocean_lib eval --model <any checkpoint> --benchmarks <name>` stops
before generating anything if an image is missing, naming the count, the first paths and the directory searched.
The miniature benchmarks (`mini_*`) need no download: `python -m ocean_lib data build` writes them.
"""


@dataclass(frozen=True)
class UrlFile:
    """A file at a URL, saved into ``directory`` (under the root); zip archives are unpacked there."""

    url: str
    directory: str

    @property
    def host(self) -> str:
        return self.url

    def fetch(self, root: Path) -> list[Path]:
        target = root / self.directory / Path(urlparse(self.url).path).name
        download(self.url, target)
        if target.suffix == ".zip":
            unpack(target, target.parent)
        return [target]


@dataclass(frozen=True)
class HubFiles:
    """Files of a Hugging Face dataset repository matching ``patterns``, saved into ``directory``."""

    repo: str
    patterns: tuple[str, ...]
    directory: str

    @property
    def host(self) -> str:
        from huggingface_hub import constants

        return constants.ENDPOINT

    def fetch(self, root: Path) -> list[Path]:
        from huggingface_hub import snapshot_download  # resumable, with per-file progress bars and sizes

        local = Path(
            snapshot_download(
                self.repo,
                repo_type="dataset",
                allow_patterns=list(self.patterns),
                local_dir=root / self.directory,
            )
        )
        files = sorted(
            p
            for p in local.rglob("*")
            if p.is_file()
            and any(fnmatch(p.relative_to(local).as_posix(), pattern) for pattern in self.patterns)
        )
        if not files:
            raise FileNotFoundError(
                f"{self.repo}: no file matches {list(self.patterns)}; see the manual steps"
            )
        for archive in (p for p in files if p.suffix == ".zip"):
            unpack(archive, archive.parent)
        return files


Source = UrlFile | HubFiles

R1V_PROMPTS = "https://raw.githubusercontent.com/Deep-Agent/R1-V/main/src/eval/prompts"
SOURCES: dict[str, tuple[Source, ...]] = {
    "superclevr": (
        UrlFile("https://www.cs.jhu.edu/~zhuowan/zhuowan/SuperCLEVR/to_be_released/images.zip", "superclevr"),
    ),
    "superclevr200": (UrlFile(f"{R1V_PROMPTS}/superclevr_test200_counting_problems.jsonl", "superclevr"),),
    "geoqa": (
        UrlFile(f"{R1V_PROMPTS}/geoqa_test_prompts.jsonl", "geoqa"),
        HubFiles("Luckyjhg/Geo170K", ("images.zip",), "geoqa/Geo170K"),
    ),
    "refcoco": (
        HubFiles("omlab/VLM-R1", ("rec_jsons_processed.zip",), "rec"),
        UrlFile("http://images.cocodataset.org/zips/train2014.zip", "coco"),
    ),
    "cvbench": (HubFiles("nyu-visionx/CV-Bench", ("test_2d.parquet", "test_3d.parquet"), "cvbench"),),
    "mathvista": (HubFiles("AI4Math/MathVista", ("data/testmini-*",), "mathvista"),),
    "mathverse": (HubFiles("AI4Math/MathVerse", ("*testmini*",), "mathverse"),),
    "mathvision": (HubFiles("MathLLMs/MathVision", ("data/test-*",), "mathvision"),),
    "olympiadbench": (HubFiles("Hothan/OlympiadBench", ("*OE_MM_*",), "olympiadbench"),),
    "mmmu": (HubFiles("MMMU/MMMU", ("*/validation-*",), "mmmu"),),
}
ALIASES = {
    "refcocop": "refcoco",
    "refcocog": "refcoco",
    "geoqa_parquet": "geoqa",
    "cvbench_parquet": "cvbench",
}


class FetchError(RuntimeError):
    """A benchmark could not be downloaded; the message carries the manual steps."""


def download(url: str, target: Path, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``target`` via ``target.part``, resuming a partial download with an HTTP Range request.

    A finished ``target`` is left alone. The progress bar shows the total size when the server gives it.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is already complete
            partial.rename(target)
            return target
        raise FetchError(f"{url}: HTTP {error.code} {error.reason}\n\n{MANUAL_STEPS}") from error
    with response:
        resumed = response.status == 206
        total = response.length + (have if resumed else 0) if response.length is not None else None
        with (
            open(partial, "ab" if resumed else "wb") as handle,
            tqdm(
                total=total, initial=have if resumed else 0, unit="B", unit_scale=True, desc=target.name
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
    partial.rename(target)
    return target


def unpack(archive: Path, destination: Path) -> None:
    """Unpack a zip archive once (a marker file records that it was fully unpacked)."""
    marker = archive.with_name(archive.name + ".unpacked")
    if marker.exists():
        return
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():  # refuse members that would land outside the destination
            if not (destination / member.filename).resolve().is_relative_to(destination.resolve()):
                raise FetchError(f"{archive}: member {member.filename!r} escapes {destination}")
        zipped.extractall(destination)
    marker.touch()


def fetch_benchmarks(
    root: str | Path, only: Sequence[str] | None = None, sources: Mapping[str, tuple[Source, ...]] = SOURCES
) -> dict[str, list[Path]]:
    """Download the named benchmarks (all by default) from ``sources`` into ``root``; return the files fetched.

    Raises :class:`FetchError` with :data:`MANUAL_STEPS` at once when a source's host cannot be reached.
    """
    root = Path(root)
    names = list(dict.fromkeys(ALIASES.get(n, n) for n in (only or sources)))
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise FetchError(f"no download source for {unknown}; known: {', '.join([*sources, *ALIASES])}")
    hosts = {source.host for name in names for source in sources[name]}
    unreachable = sorted(h for h in hosts if not reachable(h, PROBE_TIMEOUT_S))
    if unreachable:
        raise FetchError(
            f"cannot reach {', '.join(unreachable)} (no network?). Nothing was downloaded.\n\n{MANUAL_STEPS}"
        )
    fetched = {}
    for name in names:
        fetched[name] = [path for source in sources[name] for path in source.fetch(root)]
    return fetched
