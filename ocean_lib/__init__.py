"""Ocean-R1, reproduced.

Importing the package sets what every entry point (the command line, a notebook's kernel, accelerate's training
processes, papermill's kernels) needs in the environment before torch is imported, unless the variable is set
already: see :data:`RUNTIME_ENV`.
"""

import os

RUNTIME_ENV = {
    # OpenMP threads that busy-wait between parallel regions make small matmuls many times slower whenever another
    # process holds a core (a shared machine, accelerate's other ranks, reward workers): wait passively. Read by
    # the OpenMP runtime when torch loads it, so it must be set before `import torch`.
    "OMP_WAIT_POLICY": "PASSIVE",
}
for _name, _value in RUNTIME_ENV.items():
    os.environ.setdefault(_name, _value)
