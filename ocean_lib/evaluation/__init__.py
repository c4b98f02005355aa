"""Benchmark evaluation: items and verdicts (:mod:`.items`), the registry (:mod:`.benchmarks`), the scoring rules
(:mod:`.scorers`), the runner (:mod:`.runner`), the statistics (:mod:`.stats`) and the downloader (:mod:`.fetch`)."""

from ocean_lib.evaluation.benchmarks import (
    BENCHMARKS,
    REC_AVERAGES,
    REC_SPLITS,
    Benchmark,
    BenchmarkDataError,
    Item,
    get_benchmark,
)
from ocean_lib.evaluation.fetch import MANUAL_STEPS, FetchError, fetch_benchmarks, manual_steps_for
from ocean_lib.evaluation.runner import (
    MissingImagesError,
    SettingsMismatchError,
    evaluate,
    export_vlmevalkit,
    group_average,
    model_name_of,
    rescore,
    run,
)
from ocean_lib.evaluation.stats import (
    bootstrap_accuracy,
    compare_predictions,
    mcnemar_exact,
    paired_comparison,
)

__all__ = [
    "BENCHMARKS",
    "MANUAL_STEPS",
    "REC_AVERAGES",
    "REC_SPLITS",
    "Benchmark",
    "BenchmarkDataError",
    "FetchError",
    "Item",
    "MissingImagesError",
    "SettingsMismatchError",
    "bootstrap_accuracy",
    "compare_predictions",
    "evaluate",
    "export_vlmevalkit",
    "fetch_benchmarks",
    "get_benchmark",
    "group_average",
    "manual_steps_for",
    "mcnemar_exact",
    "model_name_of",
    "paired_comparison",
    "rescore",
    "run",
]
