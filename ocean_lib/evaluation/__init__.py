"""Benchmark evaluation: the registry (:mod:`.benchmarks`), the runner (:mod:`.runner`), the statistics
(:mod:`.stats`) and the downloader (:mod:`.fetch`)."""

from ocean_lib.evaluation.benchmarks import BENCHMARKS, REC_SPLITS, Benchmark, Item, get_benchmark
from ocean_lib.evaluation.fetch import MANUAL_STEPS, FetchError, fetch_benchmarks, main_fetch_benchmarks
from ocean_lib.evaluation.runner import (
    MissingImagesError,
    SettingsMismatchError,
    add_eval_arguments,
    export_vlmevalkit,
    group_average,
    main_eval,
    model_name_of,
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
    "REC_SPLITS",
    "Benchmark",
    "FetchError",
    "Item",
    "MissingImagesError",
    "SettingsMismatchError",
    "add_eval_arguments",
    "bootstrap_accuracy",
    "compare_predictions",
    "export_vlmevalkit",
    "fetch_benchmarks",
    "get_benchmark",
    "group_average",
    "main_eval",
    "main_fetch_benchmarks",
    "mcnemar_exact",
    "model_name_of",
    "paired_comparison",
    "run",
]
