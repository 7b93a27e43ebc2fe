"""LRP rules as data: what each node does with the relevance arriving at its output.

A rule is a small frozen object (zennit's idea: rules are data, not subclasses). It
names an implementation in the backend (:data:`~onnxplain.backends.base.LRP_RULE_NAMES`,
for torch in :mod:`onnxplain.backends.torch_lrp`) and carries its parameters; a
:class:`~onnxplain.methods.lrp.composites.Composite` says which node gets which rule.

Notation, for a layer z_k = Σ_j x_j w_jk + b_k with relevance R_k at its output and
R_j at its input; x⁺ = max(x, 0), x⁻ = min(x, 0), likewise w⁺, w⁻, b⁺, b⁻; the
stabiliser is stab(z) = z + ε·sign(z) with sign(0) = 1 (zennit's convention):

============  ==================================================================
``Epsilon``   R_j = x_j Σ_k w_jk R_k / stab(z_k)  (Bach et al. 2015); ε = 0 is LRP-0
``ZPlus``     R_j = Σ_k (x_j⁺ w_jk⁺ + x_j⁻ w_jk⁻) R_k / stab(z_k⁺),
              z_k⁺ = Σ_j (x_j⁺ w_jk⁺ + x_j⁻ w_jk⁻) + b_k⁺  (Montavon et al. 2017)
``AlphaBeta`` R_j = α Σ_k (x⁺w⁺ + x⁻w⁻)_jk R_k / stab(z_k⁺) − β Σ_k (x⁺w⁻ + x⁻w⁺)_jk R_k / stab(z_k⁻),
              z_k⁻ = Σ_j (x_j⁺ w_jk⁻ + x_j⁻ w_jk⁺) + b_k⁻  (Bach et al. 2015)
``Gamma``     the generalised γ-rule (Montavon et al. 2019; Andéol et al. 2021):
              w ↦ w + γw⁺ for positive, w + γw⁻ for negative contributions; units with
              z_k > 0 spread R_k over their positive contributions, units with z_k < 0
              over their negative ones
``ZBox``      R_j = Σ_k (x_j w_jk − l_j w_jk⁺ − h_j w_jk⁻) R_k / stab(Σ_j (x_j w_jk − l_j w_jk⁺ − h_j w_jk⁻)),
              pixel bounds l ≤ x ≤ h (z^B, Montavon et al. 2017)
``Flat``      R_j = Σ_k R_k / stab(Σ_j 1)  over the unit's receptive field (Lapuschkin et al. 2019)
``WSquare``   R_j = Σ_k w_jk² R_k / stab(Σ_j w_jk² + b_k²)  (w², Montavon et al. 2017)
``Norm``      R_j = x_j (∂z_k/∂x_j) R_k / stab(z_k): proportional split for layers without
              weights (sum, average pooling, mean, Add/Sub of branches)
``Pass``      R_j = R_j (element-wise activations: the relevance stays on its unit)
``Gate``      y = s ⊙ g: R_s = R, R_g = 0 (squeeze-and-excitation and attention gates)
``Gradient``  the ordinary backward pass: exact for routing (Flatten, Reshape,
              Transpose, Concat, Slice, ...) and winner-take-all for max pooling
============  ==================================================================

Every rule is linear in the relevance it receives, so the seed's scale carries through.
The bias terms follow zennit: a bias absorbs relevance in ``Epsilon``; ``ZPlus`` and
``AlphaBeta`` count b⁺ (b⁻) in the positive (negative) denominator; ``Flat`` ignores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import BackwardRule
from onnxplain.core.errors import InputValidationError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InputValidationError(message)


def _finite(name: str, value: float, minimum: float | None = 0.0) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputValidationError(f"{name} must be a number, got {value!r}") from None
    _check(math.isfinite(value), f"{name} must be finite, got {value}")
    if minimum is not None:
        _check(value >= minimum, f"{name} must be >= {minimum}, got {value}")
    return value


class Rule:
    """Base of the LRP rules. ``name``: the backend rule it maps to; ``weighted``: True
    when the rule needs a layer with weights (Conv, ConvTranspose, Gemm, MatMul with a
    constant operand, BatchNormalization)."""

    name: ClassVar[str] = ""
    weighted: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        return {}

    def backward_rule(self) -> BackwardRule | None:
        """What the backend runs for this rule (None: the ordinary gradient)."""
        return BackwardRule(self.name, self.params())


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015): R_j = x_j Σ_k w_jk R_k / (z_k + ε·sign(z_k)).

    ``epsilon=0`` is LRP-0 (units with z_k = 0 pass no relevance). On a node without
    weights (pooling, Add) it is :class:`Norm` with this ε.
    """

    epsilon: float = 1e-6
    name: ClassVar[str] = "lrp.epsilon"
    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _finite("Epsilon: epsilon", self.epsilon))

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}


def LRP0() -> Epsilon:  # noqa: N802 - reads like the other rules
    """LRP-0 (Bach et al. 2015): :class:`Epsilon` with ε = 0."""
    return Epsilon(0.0)


@dataclass(frozen=True)
class ZPlus(Rule):
    """z⁺ (Montavon et al. 2017), i.e. α1β0: only positive contributions carry relevance."""

    stabilizer: float = 1e-6
    name: ClassVar[str] = "lrp.zplus"
    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "stabilizer", _finite("ZPlus: stabilizer", self.stabilizer))

    def params(self) -> dict[str, Any]:
        return {"stabilizer": self.stabilizer}


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """αβ (Bach et al. 2015): α times the positive share minus β times the negative one.

    Conservation needs α − β = 1 (α2β1, α1β0 are the usual choices); other values are
    accepted and scale the total relevance.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    name: ClassVar[str] = "lrp.alphabeta"
    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _finite("AlphaBeta: alpha", self.alpha))
        object.__setattr__(self, "beta", _finite("AlphaBeta: beta", self.beta))
        object.__setattr__(self, "stabilizer", _finite("AlphaBeta: stabilizer", self.stabilizer))

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "stabilizer": self.stabilizer}


def Alpha2Beta1(stabilizer: float = 1e-6) -> AlphaBeta:  # noqa: N802
    """α = 2, β = 1."""
    return AlphaBeta(2.0, 1.0, stabilizer)


def Alpha1Beta0(stabilizer: float = 1e-6) -> AlphaBeta:  # noqa: N802
    """α = 1, β = 0 (the same as :class:`ZPlus`)."""
    return AlphaBeta(1.0, 0.0, stabilizer)


@dataclass(frozen=True)
class Gamma(Rule):
    """The generalised γ-rule (Montavon et al. 2019, Andéol et al. 2021), as zennit's ``Gamma``."""

    gamma: float = 0.25
    stabilizer: float = 1e-6
    name: ClassVar[str] = "lrp.gamma"
    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", _finite("Gamma: gamma", self.gamma))
        object.__setattr__(self, "stabilizer", _finite("Gamma: stabilizer", self.stabilizer))

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "stabilizer": self.stabilizer}


def _bound(name: str, value: Any) -> Any:
    arr = np.asarray(value, dtype=np.float64)
    _check(
        arr.size > 0 and bool(np.isfinite(arr).all()),
        f"ZBox: {name} must be a finite number or array (one per channel, or input-shaped)",
    )
    return float(arr) if arr.ndim == 0 else arr.tolist()


@dataclass(frozen=True)
class ZBox(Rule):
    """z^B for the input layer (Montavon et al. 2017): pixels bounded by ``low`` ≤ x ≤ ``high``.

    ``low``/``high``: scalars, one value per channel (C,), or the input's shape (C, H, W),
    in the units the layer sees (after any normalisation the model does not contain).
    """

    low: Any = 0.0
    high: Any = 1.0
    stabilizer: float = 1e-6
    name: ClassVar[str] = "lrp.zbox"
    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        low, high = _bound("low", self.low), _bound("high", self.high)
        try:
            ok = bool((np.asarray(low) <= np.asarray(high)).all())
        except ValueError:
            raise InputValidationError(
                f"ZBox: low {np.shape(low)} and high {np.shape(high)} must have compatible shapes"
            ) from None
        _check(ok, "ZBox: low must be <= high everywhere")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "stabilizer", _finite("ZBox: stabilizer", self.stabilizer))

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "stabilizer": self.stabilizer}


@dataclass(frozen=True)
class Flat(Rule):
    """Flat (Lapuschkin et al. 2019): relevance spread uniformly over the receptive field."""

    stabilizer: float = 1e-6
    name: ClassVar[str] = "lrp.flat"
    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "stabilizer", _finite("Flat: stabilizer", self.stabilizer))

    def params(self) -> dict[str, Any]:
        return {"stabilizer": self.stabilizer}


@dataclass(frozen=True)
class WSquare(Rule):
    """w² (Montavon et al. 2017): for inputs without bounds, relevance ∝ squared weights."""

    stabilizer: float = 1e-6
    name: ClassVar[str] = "lrp.wsquare"
    weighted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "stabilizer", _finite("WSquare: stabilizer", self.stabilizer))

    def params(self) -> dict[str, Any]:
        return {"stabilizer": self.stabilizer}


@dataclass(frozen=True)
class Norm(Rule):
    """Proportional split for nodes without weights (zennit's ``Norm``):
    R_j = x_j (∂z/∂x_j) R / stab(z). Sum/average pooling, means, Add/Sub of branches
    (each branch gets its share of the sum), Resize.

    ``signal``: only that input receives relevance, the others held constant. A
    transformer's product of attention weights and values, A·V, gets ``Norm(signal=<V>)``
    by default: the ε rule of a linear layer whose weights are A (the attention rule of Ali
    et al., "XAI for Transformers", ICML 2022), so no relevance enters the softmax."""

    stabilizer: float = 1e-6
    signal: int | None = None
    name: ClassVar[str] = "lrp.norm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stabilizer", _finite("Norm: stabilizer", self.stabilizer))
        if self.signal is not None:
            _check(
                isinstance(self.signal, int) and self.signal >= 0,
                f"Norm: signal must be an input index >= 0, got {self.signal!r}",
            )

    def params(self) -> dict[str, Any]:
        if self.signal is None:
            return {"stabilizer": self.stabilizer}
        return {"stabilizer": self.stabilizer, "signal": self.signal}


@dataclass(frozen=True)
class Uniform(Rule):
    """The uniform rule of AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise
    Relevance Propagation for Transformers", ICML 2024) for a product of computed tensors:
    each input's proportional share, divided by their number. An element-wise product
    a ⊙ b gives R_a = R_b = R / 2; a matrix product A·B of two computed tensors gives each
    term A_ji B_ik its ε-share of R_jk, half to A_ji and half to B_ik. Relevance is
    conserved. Composites map it to every product of two computed tensors in which neither
    is a gate (gMLP's spatial gating, FocalNet's modulation, StarNet's star operation,
    rotary position codes, gated MLPs, linear attention), as AttnLRP does; map it by name to
    use it on a product whose gate was found, e.g.
    ``EpsilonPlusFlat(rules=[(Select(name="..."), Uniform())])``."""

    stabilizer: float = 1e-6
    name: ClassVar[str] = "lrp.uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stabilizer", _finite("Uniform: stabilizer", self.stabilizer))

    def params(self) -> dict[str, Any]:
        return {"stabilizer": self.stabilizer}


@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged (element-wise activations; zennit's ``Pass``)."""

    name: ClassVar[str] = "lrp.pass"


@dataclass(frozen=True)
class Gate(Rule):
    """y = s ⊙ g: all relevance to the signal s, none to the gate g (SE and attention
    blocks). ``signal``: the input index of s; None finds it: the input that is not
    broadcast, else the one not computed by a Sigmoid/HardSigmoid/Tanh/Softmax."""

    signal: int | None = None
    name: ClassVar[str] = "lrp.gate"

    def __post_init__(self) -> None:
        if self.signal is not None:
            _check(
                isinstance(self.signal, int) and self.signal >= 0,
                f"Gate: signal must be an input index >= 0, got {self.signal!r}",
            )

    def params(self) -> dict[str, Any]:
        return {"signal": self.signal}


@dataclass(frozen=True)
class Gradient(Rule):
    """The ordinary backward pass. Exact for nodes that only route values (Flatten,
    Reshape, Transpose, Concat, Slice, Pad, ...) and winner-take-all for max pooling:
    each window's relevance goes to its maximum."""

    name: ClassVar[str] = "gradient"

    def backward_rule(self) -> BackwardRule | None:
        return None


#: Max pooling's usual rule under its literature name.
WinnerTakeAll = Gradient
