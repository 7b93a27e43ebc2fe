"""The torch implementations of the named backward rules (:data:`~onnxplain.backends.base.RULE_NAMES`).

Methods never see this module: they ask :meth:`TorchBackend.gradients` for rules by name
(``rules={node: BackwardRule("rectgrad", {"q": 98})}``) and the backend turns each name
into a function of a :class:`~onnxplain.backends.torch_backend.RuleContext` here. A rule
returns the new gradients of the node's inputs (``None`` keeps autograd's).

All rules below are written for rectifier nodes (Relu, LeakyRelu, Clip with min 0): one
input z, one output a, incoming gradient g = ``ctx.grad_output[0]`` and ordinary input
gradient f'(z)·g = ``ctx.grad_input[0]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from onnxplain.backends.base import LRP_RULE_NAMES, RULE_NAMES, BackwardRule
from onnxplain.core.errors import InputValidationError

if TYPE_CHECKING:
    from onnxplain.backends.torch_backend import Rule, RuleContext


def gradient() -> Rule:
    """The ordinary derivative (the rule that changes nothing)."""

    def rule(ctx: RuleContext) -> None:
        return None

    return rule


def guided() -> Rule:
    """Guided backpropagation (Springenberg et al., ICLR-W 2015): max(f'(z)·g, 0).

    A gradient passes where the forward input was positive *and* the gradient is
    positive; the same as Captum's hook ``relu(grad_input)``.
    """

    def rule(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        return (_relu(ctx.grad_input[0]),)

    return rule


def deconvnet() -> Rule:
    """The deconvnet's backward ReLU (Zeiler & Fergus, ECCV 2014): max(g, 0).

    The forward switch is ignored; the same as Captum's hook ``relu(grad_output)``.
    """

    def rule(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        return (_relu(ctx.grad_output[0]),)

    return rule


def rectgrad(q: float = 98.0) -> Rule:
    """Rectified gradient (Kim et al. 2019, arXiv 1902.04893):

        R(l) = 1[a ⊙ g ≥ τ] ⊙ f'(z) ⊙ g,     τ = q-th percentile of a ⊙ g per example

    ``a`` is the node's output (the activation) and the percentile is taken over all of
    one example's units (linear interpolation, as ``numpy.percentile``). Keeping the
    ordinary derivative f'(z) makes q = 0 exactly the gradient; whenever τ > 0 (the
    paper's regime, q = 98) this equals the authors' rule ``where(a·g > τ, g, 0)`` up to
    values exactly at τ.
    """
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise InputValidationError(f"rectgrad: q must be a percentile in [0, 100], got {q}")

    def rule(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        grad_in, g = ctx.grad_input[0], ctx.grad_output[0]
        if grad_in is None or g is None:
            return (grad_in,)
        a = ctx.output if isinstance(ctx.output, torch.Tensor) else ctx.output[0]
        importance = (a.detach() * g).reshape(len(g), -1)
        tau = percentile(importance, q)
        keep = (importance >= tau).reshape(g.shape)
        return (torch.where(keep, grad_in, torch.zeros_like(grad_in)),)

    return rule


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile of each row of ``values`` (N, M), as (N, 1); linear interpolation.

    ``torch.quantile`` refuses inputs above 2**24 elements, which a batch of feature maps
    exceeds, so this selects the two order statistics with ``kthvalue``.
    """
    m = values.shape[1]
    pos = q / 100.0 * (m - 1)
    lo = min(int(math.floor(pos)), m - 1)
    frac = pos - lo
    low = values.kthvalue(lo + 1, dim=1, keepdim=True).values
    if frac == 0.0 or lo + 1 >= m:
        return low
    high = values.kthvalue(lo + 2, dim=1, keepdim=True).values
    return low + (high - low) * frac


def _relu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.relu(t)


_FACTORIES: dict[str, Callable[..., Rule]] = {
    "gradient": gradient,
    "guided": guided,
    "deconvnet": deconvnet,
    "rectgrad": rectgrad,
}
assert set(_FACTORIES) == set(RULE_NAMES)


def resolve(rule: Any, backend: Any = None, node: str | None = None) -> Rule:
    """A torch rule from a :class:`BackwardRule`, a rule name, or a rule function.

    ``backend``/``node``: the :class:`TorchBackend` and the node the rule applies to (the
    LRP rules of :data:`~onnxplain.backends.base.LRP_RULE_NAMES` read the node's weights).
    """
    if isinstance(rule, str):
        rule = BackwardRule(rule)
    if isinstance(rule, BackwardRule) and rule.name in LRP_RULE_NAMES:
        from onnxplain.backends import torch_lrp

        return torch_lrp.resolve(rule, backend, node)
    if isinstance(rule, BackwardRule):
        factory = _FACTORIES.get(rule.name)
        if factory is None:
            raise InputValidationError(
                f"unknown backward rule {rule.name!r}; the torch backend knows {list(RULE_NAMES)}"
            )
        params: Mapping[str, Any] = rule.params or {}
        try:
            return factory(**params)
        except TypeError as exc:
            raise InputValidationError(f"backward rule {rule.name!r}: {exc}") from None
    if callable(rule):
        return rule
    raise InputValidationError(
        f"a backward rule must be a BackwardRule, one of {list(RULE_NAMES)} or a function of a "
        f"RuleContext, got {type(rule).__name__}"
    )
