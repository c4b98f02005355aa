"""NCCL's rule, enforced on CPU: every tensor handed to a collective lives on the accelerator.

gloo (the CPU backend) accepts host tensors and NCCL (GPUs) does not, so code that all-reduces a CPU tensor
passes every CPU test and fails at step 1 on GPUs. On a CPU machine the accelerator *is* the host, so the spy
first gives it a name of its own: ``ACCELERATE_TORCH_DEVICE=cpu:0`` makes ``accelerator.device`` ``cpu:0``.
A CPU tensor does not remember which name it was made with, so a ``TorchFunctionMode`` follows where each
tensor comes from:

* **host**: made by a factory (``torch.tensor``, ``zeros``, ``arange``, ...) without a device or with another
  device than ``cpu:0``; moved with ``.cpu()`` or ``.to(<not cpu:0>)``; or computed from host tensors only
  (an op mixing host and accelerator tensors yields an accelerator tensor, as a CPU scalar with a CUDA tensor);
* **accelerator**: everything else: made with ``device=accelerator.device``, moved with ``.to(cpu:0)``,
  computed from such tensors, gradients.

Every call of ``torch.distributed``'s collectives checks the tensors it is given and records a host tensor with
the calling code's stack. Exempt are

* object collectives (``all_gather_object``, ``broadcast_object_list``, ...): torch moves their byte tensors
  to the backend's device itself (CUDA under NCCL);
* DeepSpeed's own collectives (a ``deepspeed`` frame on the stack): DeepSpeed allocates its buffers on its
  accelerator's device or beside the parameters (``device=param.device``), which on CPU is ``cpu`` whatever
  name the accelerator has, so provenance cannot tell its buffers apart here; on GPUs its CUDA accelerator
  places them (DeepSpeed's own GPU tests cover that).

What remains is every collective of ocean_lib, and of accelerate on its behalf (``reduce``, ``gather``,
``broadcast``...). The tracking is conservative: a tensor whose origin it cannot see counts as on the
accelerator, so it can miss a violation, never invent one.

Activated by a ``sitecustomize`` that calls :func:`install` when ``COLLECTIVE_SPY_DIR`` is set (see
``tests/test_distributed.py``); each process writes ``rank<r>.json`` there at exit:
``{"checked": {collective: calls checked}, "objects": {"<object collective> from <module>:<function>": calls},
"violations": [{"collective", "stack"}]}``.
"""

from __future__ import annotations

import atexit
import json
import os
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ACCELERATOR = torch.device("cpu", 0)
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "_all_gather_base",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "_reduce_scatter_base",
    "broadcast",
    "reduce",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
)
OBJECT_COLLECTIVES = {
    "all_gather_object",
    "gather_object",
    "broadcast_object_list",
    "scatter_object_list",
    "send_object_list",
    "recv_object_list",
}
FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.linspace,
    torch.eye,
}

HOST = "_collective_spy_host"  # attribute set on tensors made on the host
_checked: dict[str, int] = {}
_objects: dict[str, int] = {}  # "<object collective> from <ocean_lib module>:<function>" -> calls
_violations: list[dict[str, object]] = []


def _tensors(value: object):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _on_host(tensor: torch.Tensor) -> bool:
    return getattr(tensor, HOST, False)


def _mark(tensor: torch.Tensor, host: bool) -> None:
    if host:
        setattr(tensor, HOST, True)
    elif _on_host(tensor):
        delattr(tensor, HOST)


def _is_host_device(device: object) -> bool:
    return torch.device(device) != ACCELERATOR


class _Provenance(TorchFunctionMode):
    """Marks the tensors made on the host (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if hasattr(func, "collective_spy_original"):  # a spied collective dispatched here: checked already
            return func.collective_spy_original(*args, **kwargs)
        out = func(*args, **kwargs)
        host = self._host_result(func, args, kwargs)
        if host is not None:
            for tensor in _tensors(out):
                _mark(tensor, host)
        return out

    @staticmethod
    def _host_result(func, args, kwargs) -> bool | None:
        name = getattr(func, "__name__", "")
        if name == "__set__" and len(args) == 2:  # param.data = tensor: the target is where the value is
            target, value = args
            if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
                _mark(target, _on_host(value))
            return None
        if name == "cpu":
            return True
        if name == "cuda":
            return False
        device = kwargs.get("device")
        if name == "to" and device is None:
            for arg in args[1:]:
                if isinstance(arg, torch.device | str):
                    device = arg
                elif isinstance(arg, torch.Tensor):
                    return _on_host(arg)
        if device is not None:
            return _is_host_device(device)
        if func in FACTORIES:
            return True
        inputs = list(_tensors((args, kwargs)))
        if inputs:
            return all(_on_host(t) for t in inputs)
        return None


def _wrap(module, name: str):
    original = getattr(module, name)

    def collective(*args, **kwargs):
        stack = traceback.extract_stack()[:-1]
        exempt = any(
            f.name in OBJECT_COLLECTIVES or f"{os.sep}deepspeed{os.sep}" in f.filename for f in stack
        )
        if not exempt:
            _checked[name] = _checked.get(name, 0) + 1
            if any(_on_host(tensor) for tensor in _tensors((args, kwargs))):
                ours = [
                    f for f in stack if f"{os.sep}torch{os.sep}" not in f.filename and f.filename != __file__
                ]
                frames = [f"{f.filename}:{f.lineno} {f.name}" for f in ours[-8:]]
                _violations.append({"collective": name, "stack": frames})
        return original(*args, **kwargs)

    collective.collective_spy_original = original
    return collective


def _count_object_collective(module, name: str):
    """Count the calls of an object collective by the ocean_lib function that made them (not checked: exempt)."""
    original = getattr(module, name)

    def collective(*args, **kwargs):
        ours = [f for f in traceback.extract_stack()[:-1] if f"{os.sep}ocean_lib{os.sep}" in f.filename]
        if ours:
            caller = f"{Path(ours[-1].filename).stem}:{ours[-1].name}"
            _objects[f"{name} from {caller}"] = _objects.get(f"{name} from {caller}", 0) + 1
        return original(*args, **kwargs)

    return collective


def _write(directory: Path) -> None:
    rank = os.environ.get("RANK")
    if rank is None:  # a launcher, not a training process
        return
    report = {"checked": _checked, "objects": _objects, "violations": _violations}
    (directory / f"rank{rank}.json").write_text(json.dumps(report, indent=1))


def install(directory: str | Path) -> None:
    """Name the accelerator ``cpu:0``, track tensor provenance, check the collectives; report at exit."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    os.environ["ACCELERATE_TORCH_DEVICE"] = str(ACCELERATOR)
    for name in COLLECTIVES:
        wrapped = _wrap(distributed_c10d, name)
        setattr(distributed_c10d, name, wrapped)
        setattr(dist, name, wrapped)
    for name in OBJECT_COLLECTIVES:
        counted = _count_object_collective(distributed_c10d, name)
        setattr(distributed_c10d, name, counted)
        setattr(dist, name, counted)
    _Provenance().__enter__()
    atexit.register(_write, Path(directory))
