"""Where the host waits on the device: a recorder of the tensor operations that make it wait.

On a GPU the host queues kernels and runs ahead of them, until an operation needs a value
the device has not computed yet: a tensor read as a Python number (``bool(t)``, ``t.item()``,
``if t.any()``), an output whose size depends on the data (``nonzero``, indexing by a bool
mask), or a copy of a device tensor to the host. Each one drains the queue, and none can be
captured by a CUDA graph (``run.compile: reduce-overhead``). :class:`HostSyncRecorder` lists
them as they are dispatched:

- scalar reads: ``aten._local_scalar_dense`` (what ``.item()``, ``bool()``, ``int()`` and
  ``float()`` of a tensor call), ``aten.item``, ``aten.is_nonzero``, ``aten.equal``;
- data-dependent shapes: ``aten.nonzero``, ``aten.masked_select``, ``aten.index`` with a
  bool index, ``aten.unique*``, ``aten.repeat_interleave`` without ``output_size``;
- copies from a non-CPU device to the CPU (``aten._to_copy``, ``aten.copy_``);
- reads to the host that never reach the dispatcher: ``Tensor.tolist``, ``.numpy``, ``.cpu``
  (seen one level up, as torch functions; on a CPU tensor they copy nothing, on a GPU's they
  would);
- copies from the host to a device (``_to_copy``, ``copy_``), and tensors made from Python
  data (``torch.tensor``, ``torch.as_tensor``), which a GPU run makes on the host and copies:
  torch copies pageable host memory to a device synchronously, so the host waits for the
  copy and the device for the host.

A higher-order operator (FlexAttention's, :mod:`econspin.flex`) is run by its eager form with
the recorder on, so that the operators inside it are recorded too; torch.compile does not trace
under a dispatch mode, so the compiled passes of a GPU are not watched, only that eager form.

On the CPU every tensor is already on the host, so nothing actually waits and device copies
cannot occur; everything else is recorded all the same, which is what lets a CPU test suite
prove that a GPU rollout would not stop (tests/test_device_rollout.py). For that the CPU's
tensors stand in for a device's while a recorder runs: code that reads a CPU tensor's memory
directly on the host where it can (numpy's sort in econspin.metrics.sorted_rows) asks
:func:`reads_on_host` first, which says no while recording, so the recorder watches the path a
GPU's tensors take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.attention.flex_attention as flex_attention_module
from torch._C import DispatchKey
from torch._ops import HigherOrderOperator
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SCALAR_READS = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default, aten.equal.default}
DATA_DEPENDENT_SHAPES = {
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
}
HOST_READ_METHODS = {"tolist", "numpy", "cpu"}  # Tensor methods that return host data whatever the device
HOST_DATA_FUNCTIONS = {"tensor", "as_tensor"}  # tensors from Python data: made on the host, then copied

FLEX_SWITCH = "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG"  # torch: FlexAttention without its compile wrapper

# how many recorders are running (nested or not): while any is, the CPU's tensors stand in for a device's.
# Module state, because the dispatch modes the recorders push are process state too.
_recording = 0


def reads_on_host(tensor: torch.Tensor) -> bool:
    """Whether the host may read ``tensor``'s memory directly (numpy): a CPU tensor, and no recorder running."""
    return tensor.device.type == "cpu" and _recording == 0


def _packet(op) -> str:
    return op.overloadpacket.__name__


def _is_bool_index(op, args) -> bool:
    if _packet(op) not in ("index", "index_put", "index_put_"):
        return False
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] or ()) if t is not None)


def _copy_direction(op, args, kwargs) -> str | None:
    """Copy to host or copy from host (as strings) for a copy between the CPU and a device, else None."""
    name = _packet(op)
    if name == "_to_copy" and kwargs.get("device") is not None:
        source, target = args[0].device.type, torch.device(kwargs["device"]).type
    elif name == "copy_" and isinstance(args[1], torch.Tensor):
        source, target = args[1].device.type, args[0].device.type
    else:
        return None
    if source == target or "cpu" not in (source, target) or "meta" in (source, target):
        return None
    return "copy to host" if target == "cpu" else "copy from host"


def sync_kind(op, args, kwargs) -> str | None:
    """Why this dispatched operation makes the host wait for the device, or None if it does not."""
    if op in SCALAR_READS:
        return "scalar read"
    name = _packet(op)
    if name in DATA_DEPENDENT_SHAPES or _is_bool_index(op, args):
        return "data-dependent shape"
    if name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) == 1:
        return "data-dependent shape"
    return _copy_direction(op, args, kwargs)


@dataclass
class HostSync:
    """One recorded operation: what it was, why it waits, and the innermost econspin frame calling it."""

    operation: str
    kind: str
    where: str


class _DispatchedSyncs(TorchDispatchMode):
    # higher-order operators (FlexAttention's, econspin.flex) come here whole: each is run by
    # its eager form with this mode on, so that the operators inside it are recorded too
    supports_higher_order_operators = True

    def __init__(self, events: list[HostSync]):
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, HigherOrderOperator):
            eager = func.py_kernels.get(DispatchKey.CompositeExplicitAutograd)
            if eager is None:
                raise NotImplementedError(f"HostSyncRecorder: no eager form of {func.name()} to watch")
            with self:
                return eager(*args, **kwargs)
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            self.events.append(HostSync(str(func), kind, _caller()))
        return func(*args, **kwargs)


class _HostReads(TorchFunctionMode):
    def __init__(self, events: list[HostSync]):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READ_METHODS:
            self.events.append(HostSync(f"Tensor.{name}", "copy to host", _caller()))
        elif name in HOST_DATA_FUNCTIONS and not isinstance(args[0] if args else None, torch.Tensor):
            self.events.append(HostSync(f"torch.{name}", "copy from host", _caller()))
        return func(*args, **(kwargs or {}))


@dataclass
class HostSyncRecorder:
    """``with HostSyncRecorder() as syncs: ...`` then ``syncs.events``: every host synchronisation dispatched."""

    events: list[HostSync] = field(default_factory=list)

    def __enter__(self) -> "HostSyncRecorder":
        # torch.compile refuses to trace under a dispatch mode ("non-infra torch dispatch mode
        # present"), and FlexAttention's eager form wraps its operator in torch.compile: torch's
        # own debugging switch calls the operator without the wrapper, the same operator and
        # numbers (tests/test_flex.py), so that the recorder watches the eager form the CPU runs
        # (a private switch: where a torch lacks it, the flex kernel is simply not watched)
        self._flex_unwrapped = getattr(flex_attention_module, FLEX_SWITCH, None)
        if self._flex_unwrapped is not None:
            setattr(flex_attention_module, FLEX_SWITCH, True)
        self._modes = (_HostReads(self.events), _DispatchedSyncs(self.events))
        for mode in self._modes:
            mode.__enter__()
        global _recording
        _recording += 1
        return self

    def __exit__(self, *failure) -> None:
        global _recording
        _recording -= 1
        for mode in reversed(self._modes):
            mode.__exit__(*failure)
        if self._flex_unwrapped is not None:
            setattr(flex_attention_module, FLEX_SWITCH, self._flex_unwrapped)

    def summary(self) -> list[str]:
        """One line per distinct (kind, operation, caller), with its count."""
        counts: dict[tuple[str, str, str], int] = {}
        for event in self.events:
            key = (event.kind, event.operation, event.where)
            counts[key] = counts.get(key, 0) + 1
        return [f"{count:5d} x {kind}: {operation} at {where}" for (kind, operation, where), count in counts.items()]


def _caller() -> str:
    import traceback

    for frame in reversed(traceback.extract_stack()):
        if "/econspin/" in frame.filename and not frame.filename.endswith("host_syncs.py"):
            return f"{frame.filename.rsplit('/econspin/', 1)[1]}:{frame.lineno} {frame.name}"
    return "outside econspin"
