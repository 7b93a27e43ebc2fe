"""Backends execute a model; methods talk only to the :class:`Backend` interface.

``register(name, factory)`` adds a backend that every method can then use by name.
"""

from onnxplain.backends.base import INPUT, RULE_NAMES, Backend, BackwardRule, Capability, GradientResult
from onnxplain.backends.callable_backend import CallableBackend
from onnxplain.backends.registry import available, choose, create, register, unregister


def _onnxruntime(model, **options):
    from onnxplain.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, **options)


def _torch(model, **options):
    from onnxplain.backends.torch_backend import TorchBackend

    return TorchBackend(model, **options)


register("onnxruntime", _onnxruntime, {Capability.FORWARD, Capability.ACTIVATIONS}, priority=10)
register(
    "torch",
    _torch,
    {Capability.FORWARD, Capability.ACTIVATIONS, Capability.GRADIENTS, Capability.RULES},
    priority=20,
)

__all__ = [
    "INPUT",
    "RULE_NAMES",
    "Backend",
    "BackwardRule",
    "CallableBackend",
    "Capability",
    "GradientResult",
    "available",
    "choose",
    "create",
    "register",
    "unregister",
]
