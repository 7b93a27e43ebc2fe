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
    found = [e.name for e in sorted(_REGISTRY.values(), key=lambda e: e.priority)
             if needs <= e.capabilities]
    if not found:
        names = ", ".join(sorted(c.value for c in needs))
        raise BackendCapabilityError(f"no registered backend provides {names}")
    return found


def create(name: str, model: Model, **options: Any) -> Backend:
    return entry(name).factory(model, **options)
