"""Backend registry: names to factories, and the choice behind ``backend="auto"``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import BackendCapabilityError, InputValidationError

if TYPE_CHECKING:
    from onnxplain.core.model import Model


@dataclass(frozen=True)
class BackendEntry:
    name: str
    factory: Callable[..., Backend]
    capabilities: frozenset[Capability]
    priority: int  # lower is tried first by "auto"


_REGISTRY: dict[str, BackendEntry] = {}


def register(
    name: str,
    factory: Callable[..., Backend],
    capabilities: Iterable[Capability | str] | None = None,
    priority: int = 100,
    replace: bool = False,
) -> None:
    """Register a backend factory ``factory(model, **options) -> Backend`` under ``name``.

    ``capabilities`` defaults to ``factory.capabilities`` (a Backend subclass has them).
    ``backend="auto"`` tries registered backends by ascending ``priority`` and picks the
    first whose capabilities cover what the method needs.
    """
    if name in _REGISTRY and not replace:
        raise InputValidationError(f"a backend named {name!r} is already registered")
    caps = capabilities if capabilities is not None else getattr(factory, "capabilities", None)
    if caps is None:
        raise InputValidationError(
            f"backend {name!r}: pass capabilities=, e.g. {{'forward'}}, for a plain factory"
        )
    _REGISTRY[name] = BackendEntry(name, factory, frozenset(Capability(c) for c in caps), priority)


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def available() -> dict[str, frozenset[Capability]]:
    """Registered backend names and their capabilities."""
    return {e.name: e.capabilities for e in sorted(_REGISTRY.values(), key=lambda e: e.priority)}


def entry(name: str) -> BackendEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputValidationError(
            f"unknown backend {name!r}; registered: {', '.join(available())}"
        ) from None


def choose(needs: frozenset[Capability]) -> list[str]:
    """Names of the registered backends that cover ``needs``, in the order "auto" tries them."""
    found = [e.name for e in sorted(_REGISTRY.values(), key=lambda e: e.priority) if needs <= e.capabilities]
    if not found:
        names = ", ".join(sorted(c.value for c in needs))
        raise BackendCapabilityError(f"no registered backend provides {names}")
    return found


def create(name: str, model: Model, **options: Any) -> Backend:
    return entry(name).factory(model, **options)


# -- device and batch choice, shared by the built-in backends ----------------------------

#: ``max_batch_size="auto"``: the rows per forward pass a built-in backend starts from, by
#: device type. On CPU the time per row barely changes beyond 8–32 rows (benchmarks/run.py
#: reports the best batch per model); on a GPU larger batches pay, and the backend halves
#: the batch whenever a pass runs out of memory.
AUTO_BATCH_SIZE = {"cpu": 32, "cuda": 256}

_OOM_MESSAGES = (
    "out of memory",
    "failed to allocate",
    "bad_alloc",
    "cudaerrormemoryallocation",
    "cuda_error_out_of_memory",
)


def physical_cores() -> int:
    """CPU cores this process may use, hyper-threads not counted (at least 1).

    The smaller of the CPUs in the process's affinity mask and the physical cores
    (psutil when installed, else /proc/cpuinfo's distinct (physical id, core id) pairs).
    """
    import os

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    cores = None
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        try:
            pairs, physical = set(), "0"
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() == "physical id":
                        physical = value.strip()
                    elif key.strip() == "core id":
                        pairs.add((physical, value.strip()))
            cores = len(pairs) or None
        except OSError:
            pass
    return max(1, min(usable, cores or usable))


def cuda_index(device: str) -> int | None:
    """``"cuda"``/``"cuda:N"`` -> N (0 for plain ``"cuda"``), ``"cpu"`` -> None.

    Raises :class:`InputValidationError` for anything else.
    """
    head, _, index = str(device).lower().partition(":")
    if head == "cpu" and not index:
        return None
    if head == "cuda" and (not index or index.isdigit()):
        return int(index or 0)
    raise InputValidationError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def resolve_max_batch_size(value: int | str, device_type: str) -> int:
    """``"auto"`` -> :data:`AUTO_BATCH_SIZE` for the device type; an int passes through."""
    if isinstance(value, str):
        if value != "auto":
            raise InputValidationError(f"max_batch_size must be a positive int or 'auto', got {value!r}")
        return AUTO_BATCH_SIZE.get(device_type, AUTO_BATCH_SIZE["cpu"])
    return value


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a runtime's out-of-memory failure (torch's CUDA OOM, an ONNX
    Runtime arena or CUDA allocation failure, a C++ ``bad_alloc``), which a smaller batch
    may avoid."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name == "OutOfMemoryError":  # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError
        return True
    message = str(exc).lower()
    return any(m in message for m in _OOM_MESSAGES)
