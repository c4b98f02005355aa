"""Ocean-R1, reproduced.

The package is seven groups on floors; a group imports only the groups on the floors below it (never one above,
never sideways upward), so each floor can be read, tested and reused without the ones above it
(``tests/test_layout.py`` enforces it):

1. ``base``: the run's configuration (schema and loader), atomic files and locks, prompts, the run directory.
2. ``data``: training records in Ocean-R1's parquet schema, images, the miniature's procedural tasks.
3. ``rewards``: the rule-based rewards.
4. ``training``: the GRPO core: maths, model loading, rollout engines, the training forward, the trainer loop,
   its state and the accelerate launcher.
5. ``evaluation``: benchmarks, scorers, the evaluation runner and its statistics.
6. ``study``: the miniature study's pipeline and what the notebooks show (analysis, plots, rollout browser,
   walkthrough, result table, offline report).
7. ``cli``: the command line (``python -m ocean_lib``) and the GPU check.

Importing the package sets what every entry point (the command line, a notebook's kernel, accelerate's training
processes, papermill's kernels) needs in the environment before torch is imported, unless the variable is set
already: see :data:`RUNTIME_ENV`.
"""

import logging
import os

FLOORS = ("base", "data", "rewards", "training", "evaluation", "study", "cli")
"""The groups, lowest floor first: each imports only groups before it in this tuple."""

RUNTIME_ENV = {
    # OpenMP threads that busy-wait between parallel regions make small matmuls many times slower whenever another
    # process holds a core (a shared machine, accelerate's other ranks, reward workers): wait passively. Read by
    # the OpenMP runtime when torch loads it, so it must be set before `import torch`.
    "OMP_WAIT_POLICY": "PASSIVE",
}
for _name, _value in RUNTIME_ENV.items():
    os.environ.setdefault(_name, _value)

# DeepSpeed (imported by accelerate) warns "Setting accelerator to CPU ..." on every machine without a GPU, into
# every notebook's output and every run's log; the device a run used is in its run_info.json. Dropped here, before
# DeepSpeed configures its logger (it keeps the filter of the logger it finds).
DEEPSPEED_NOTICES = ("Setting accelerator to CPU",)
logging.getLogger("DeepSpeed").addFilter(lambda record: not record.getMessage().startswith(DEEPSPEED_NOTICES))
