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

| Benchmark (`--benchmarks` names) | Annotations → where | Images → where |
|---|---|---|
| SuperCLEVR 5k (`superclevr`, `superclevr_verl`) | `super_clevr_test_5k.jsonl` from Ocean-R1's `eval_data/prompts/` (GitHub `VLM-RL/Ocean-R1`) → `superclevr/` | SuperCLEVR `images.zip` (https://www.cs.jhu.edu/~zhuowan/zhuowan/SuperCLEVR/to_be_released/images.zip) unpacked → `superclevr/` (so that `superclevr/images/superCLEVR_new_025432.png` exists) |
| SuperCLEVR 200 (`superclevr200`) | R1-V `src/eval/prompts/superclevr_test200_counting_problems.jsonl` → `superclevr/` | as above |
| GeoQA 754 (`geoqa`, `geoqa_verl`) | R1-V `src/eval/prompts/geoqa_test_prompts.jsonl` → `geoqa/` | Geo170K images (Hugging Face dataset `Luckyjhg/Geo170K`, `images.zip`) unpacked → `geoqa/Geo170K/` (so that `geoqa/Geo170K/images/test/0.png` exists) |
| GeoQA 740 (`geoqa_parquet`) | `geoqa_test.parquet` from Ocean-R1's `eval_data/` (GitHub `VLM-RL/Ocean-R1`) → `geoqa/` | as above |
| RefCOCO, RefCOCO+, RefCOCOg (`refcoco`, `refcocop`, `refcocog`, `refcoco_plain`, `refcocop_plain`, `refcocog_plain`, `refcoco_bare`, `refcocop_bare`, `refcocog_bare`) | VLM-R1 `rec_jsons_processed.zip` (Hugging Face dataset `omlab/VLM-R1`) unpacked → `rec/` | COCO `train2014.zip` (http://images.cocodataset.org/zips/train2014.zip, 13 GB) unpacked → `coco/` (so that `coco/train2014/COCO_train2014_000000000009.jpg` exists) |
| CV-Bench (`cvbench`) | Hugging Face dataset `nyu-visionx/CV-Bench`: `test_2d.parquet`, `test_3d.parquet` → `cvbench/` | embedded in the parquet files |
| CV-Bench 2,638 (`cvbench_parquet`) | `cvbench_test.parquet` from Ocean-R1's `eval_data/` (GitHub `VLM-RL/Ocean-R1`) → `cvbench/` | **by hand only**: each CV-Bench image saved as `cvbench/images/cvbench/<index>.jpg`, `<index>` being the parquet's `extra_info.index` (the path its rows name ends in `images/cvbench/<index>.jpg`); the `cvbench` benchmark reads the same questions with embedded images |
| MathVista testmini (`mathvista`) | Hugging Face dataset `AI4Math/MathVista`: `data/testmini-*.parquet` → `mathvista/` | embedded |
| MathVerse (`mathverse`, `mathverse_strict`) | Hugging Face dataset `xyliu6/mathverse_4k` (the first Ocean-R1 repository's MathVerse): its parquet files → `mathverse/` | embedded |
| MathVerse vision-dominant (`mathverse_vision_dominant`) | Hugging Face dataset `xyliu6/mathverse_vision_dominant`: its parquet files → `mathverse_vision_dominant/` | embedded |
| MathVision (`mathvision`, `mathvision_testmini`, `mathvision_strict`) | Hugging Face dataset `MathLLMs/MathVision`: `data/test-*.parquet`, `data/testmini-*.parquet` → `mathvision/` | embedded |
| OlympiadBench (`olympiadbench`, `olympiadbench_strict`) | Hugging Face dataset `lmms-lab/OlympiadBench`: the `test_en-*.parquet` files → `olympiadbench/` | embedded |
| MMMU validation (`mmmu`, `mmmu_strict`) | Hugging Face dataset `MMMU/MMMU`: `<Subject>/validation-*.parquet` → `mmmu/` | embedded |
| OCRBench (`ocrbench`) | VLMEvalKit's `OCRBench.tsv` (https://opencompass.openxlab.space/utils/VLMEval/OCRBench.tsv) → `ocrbench/` | embedded (base64) |
| MathVista, MathVision, MathVerse for a model judge (`mathvista_judge`, `mathvision_judge`, `mathverse_judge`) | VLMEvalKit's `MathVista_MINI.tsv`, `MathVision.tsv`, `MathVerse_MINIV.tsv` → `mathvista/`, `mathvision/`, `mathverse/` | embedded (base64) |

Check a layout without a GPU: `python -m ocean_lib eval --model <any checkpoint> --benchmarks <name>` stops
before generating anything if an image is missing, naming the count, the first paths and the directory searched.
The miniature benchmarks (`mini_*`) need no download: `python -m ocean_lib data build` writes them.
"""


@dataclass(frozen=True)
class UrlFile:
    """A file at a URL, saved into ``directory`` (under the root); zip archives are unpacked there, and must
    then provide the ``unpacked`` glob patterns (relative to the root)."""

    url: str
    directory: str
    unpacked: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return self.url

    @property
    def delivers(self) -> tuple[str, ...]:
        """The paths it writes, relative to the root (glob patterns for unpacked archives)."""
        return (f"{self.directory}/{Path(urlparse(self.url).path).name}", *self.unpacked)

    def fetch(self, root: Path) -> list[Path]:
        target = root / self.delivers[0]
        download(self.url, target)
        if target.suffix == ".zip":
            unpack(target, target.parent)
        check_unpacked(root, self.unpacked, self.url)
        return [target]


def check_unpacked(root: Path, patterns: tuple[str, ...], source: str) -> None:
    """Raise :class:`FetchError` when an archive did not provide the layout the registry reads."""
    missing = [pattern for pattern in patterns if next(root.glob(pattern), None) is None]
    if missing:
        raise FetchError(
            f"{source}: unpacked, but nothing matches {missing} under {root.resolve()}; the archive's layout "
            f"changed. Arrange its files as the manual steps say.\n\n{MANUAL_STEPS}"
        )


@dataclass(frozen=True)
class HubFiles:
    """Files of a Hugging Face dataset repository matching ``patterns``, saved into ``directory``."""

    repo: str
    patterns: tuple[str, ...]
    directory: str
    unpacked: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        from huggingface_hub import constants

        return constants.ENDPOINT

    @property
    def delivers(self) -> tuple[str, ...]:
        """The paths it writes, relative to the root, as glob patterns."""
        return tuple(f"{self.directory}/{pattern}" for pattern in self.patterns) + self.unpacked

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
        check_unpacked(root, self.unpacked, self.repo)
        return files


@dataclass(frozen=True)
class ManualStep:
    """Something no source publishes in the layout the registry reads: the exact step, printed by the fetch."""

    step: str

    host = None
    delivers: tuple[str, ...] = ()

    def fetch(self, root: Path) -> list[Path]:
        return []


Source = UrlFile | HubFiles | ManualStep

OCEAN_R1_EVAL_DATA = "https://raw.githubusercontent.com/VLM-RL/Ocean-R1/main/eval_data"
R1V_PROMPTS = "https://raw.githubusercontent.com/Deep-Agent/R1-V/main/src/eval/prompts"
SUPERCLEVR_IMAGES = UrlFile(
    "https://www.cs.jhu.edu/~zhuowan/zhuowan/SuperCLEVR/to_be_released/images.zip",
    "superclevr",
    ("superclevr/images/*.png",),
)
GEO170K_IMAGES = HubFiles(
    "Luckyjhg/Geo170K", ("images.zip",), "geoqa/Geo170K", ("geoqa/Geo170K/images/test/*.png",)
)
REC = (
    HubFiles(
        "omlab/VLM-R1",
        ("rec_jsons_processed.zip",),
        "rec",
        tuple(f"rec/**/{split}_val.json" for split in ("refcoco", "refcocop", "refcocog")),
    ),
    UrlFile("http://images.cocodataset.org/zips/train2014.zip", "coco", ("coco/train2014/*.jpg",)),
)
MATHVISION = (
    HubFiles("MathLLMs/MathVision", ("data/test-*.parquet", "data/testmini-*.parquet"), "mathvision"),
)
MATHVERSE = (HubFiles("xyliu6/mathverse_4k", ("*.parquet", "**/*.parquet"), "mathverse"),)
OLYMPIADBENCH = (
    HubFiles("lmms-lab/OlympiadBench", ("*test_en-*.parquet", "**/test_en-*.parquet"), "olympiadbench"),
)
MMMU = (HubFiles("MMMU/MMMU", ("*/validation-*.parquet",), "mmmu"),)
SOURCES: dict[str, tuple[Source, ...]] = {
    "superclevr": (UrlFile(f"{OCEAN_R1_EVAL_DATA}/prompts/super_clevr_test_5k.jsonl", "superclevr"), SUPERCLEVR_IMAGES),
    "superclevr200": (UrlFile(f"{R1V_PROMPTS}/superclevr_test200_counting_problems.jsonl", "superclevr"), SUPERCLEVR_IMAGES),
    "geoqa": (UrlFile(f"{R1V_PROMPTS}/geoqa_test_prompts.jsonl", "geoqa"), GEO170K_IMAGES),
    "geoqa_parquet": (UrlFile(f"{OCEAN_R1_EVAL_DATA}/geoqa_test.parquet", "geoqa"), GEO170K_IMAGES),
    # The verl repository's eval_data/prompts copies are byte-identical to the files above (md5 checked).
    "superclevr_verl": (UrlFile(f"{OCEAN_R1_EVAL_DATA}/prompts/super_clevr_test_5k.jsonl", "superclevr"), SUPERCLEVR_IMAGES),
    "geoqa_verl": (UrlFile(f"{OCEAN_R1_EVAL_DATA}/prompts/geoqa_test_prompts.jsonl", "geoqa"), GEO170K_IMAGES),
    **{name: REC for prefix in ("refcoco", "refcocop", "refcocog") for name in (prefix, f"{prefix}_plain", f"{prefix}_bare")},
    "cvbench": (HubFiles("nyu-visionx/CV-Bench", ("test_2d.parquet", "test_3d.parquet"), "cvbench"),),
    "cvbench_parquet": (
        UrlFile(f"{OCEAN_R1_EVAL_DATA}/cvbench_test.parquet", "cvbench"),
        ManualStep(
            "cvbench_parquet: its images are published nowhere in its layout. Save each CV-Bench image as "
            "cvbench/images/cvbench/<index>.jpg under the root (<index> = the row's extra_info.index), or "
            "evaluate the `cvbench` benchmark, which reads the same questions with embedded images."
        ),
    ),
    "mathvista": (HubFiles("AI4Math/MathVista", ("data/testmini-*.parquet",), "mathvista"),),
    "mathverse": MATHVERSE,
    "mathverse_strict": MATHVERSE,
    "mathverse_vision_dominant": (
        HubFiles("xyliu6/mathverse_vision_dominant", ("*.parquet", "**/*.parquet"), "mathverse_vision_dominant"),
    ),
    "mathvision": MATHVISION,
    "mathvision_testmini": MATHVISION,
    "mathvision_strict": MATHVISION,
    "olympiadbench": OLYMPIADBENCH,
    "olympiadbench_strict": OLYMPIADBENCH,
    "mmmu": MMMU,
    "mmmu_strict": MMMU,
    "ocrbench": (UrlFile("https://opencompass.openxlab.space/utils/VLMEval/OCRBench.tsv", "ocrbench"),),
    # VLMEvalKit's DATASET_URL of each (vlmeval/dataset/image_vqa.py)
    "mathvista_judge": (UrlFile("https://opencompass.openxlab.space/utils/VLMEval/MathVista_MINI.tsv", "mathvista"),),
    "mathvision_judge": (UrlFile("https://opencompass.openxlab.space/utils/VLMEval/MathVision.tsv", "mathvision"),),
    "mathverse_judge": (
        UrlFile("https://opencompass.openxlab.space/utils/benchmarks/MathVerse/MathVerse_MINIV.tsv", "mathverse"),
    ),
}  # fmt: skip


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

    Raises :class:`FetchError` with :data:`MANUAL_STEPS` at once when a source's host cannot be reached. Each
    source is fetched once, even when several benchmarks share it. What no source can deliver is a
    :class:`ManualStep`: see :func:`manual_steps_for`.
    """
    root = Path(root)
    names = list(dict.fromkeys(only or sources))
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise FetchError(f"no download source for {unknown}; known: {', '.join(sources)}")
    hosts = {source.host for name in names for source in sources[name] if source.host is not None}
    unreachable = sorted(h for h in hosts if not reachable(h, PROBE_TIMEOUT_S))
    if unreachable:
        raise FetchError(
            f"cannot reach {', '.join(unreachable)} (no network?). Nothing was downloaded.\n\n{MANUAL_STEPS}"
        )
    fetched: dict[str, list[Path]] = {}
    done: dict[Source, list[Path]] = {}
    for name in names:
        for source in sources[name]:
            if source not in done:
                done[source] = source.fetch(root)
        fetched[name] = [path for source in sources[name] for path in done[source]]
    return fetched


def manual_steps_for(names: Sequence[str], sources: Mapping[str, tuple[Source, ...]] = SOURCES) -> list[str]:
    """The steps left to do by hand for ``names`` (each once)."""
    steps = (
        source.step for name in names for source in sources.get(name, ()) if isinstance(source, ManualStep)
    )
    return list(dict.fromkeys(steps))
