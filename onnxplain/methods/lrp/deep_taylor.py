"""Deep Taylor decomposition: Montavon, Lapuschkin, Binder, Samek & Müller, Pattern
Recognition 2017 ("Explaining nonlinear classification decisions with deep Taylor
decomposition").

Hidden layers (every Conv, Gemm, MatMul) use the z⁺ rule

    R_j = Σ_k x_j w_jk⁺ / Σ_j' x_j' w_j'k⁺ · R_k

and the layer that sees the pixels the z^B rule for the box ``low`` ≤ x ≤ ``high``

    R_i = Σ_j (x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻) / Σ_i' (x_i' w_i'j − l_i' w_i'j⁺ − h_i' w_i'j⁻) · R_j

or, without bounds (inputs in ℝ^d), the w² rule R_i = Σ_j w_ij² / Σ_i' w_i'j² · R_j.
Seed and conservation as in :class:`~onnxplain.methods.lrp.lrp.LRP`.
"""

from __future__ import annotations

from typing import Any

from onnxplain.backends.base import Backend
from onnxplain.core.model import Model
from onnxplain.methods.lrp.composites import DeepTaylorComposite
from onnxplain.methods.lrp.lrp import LRP


class DeepTaylor(LRP):
    """Deep Taylor decomposition (z⁺ in hidden layers, z^B or w² at the input);
    ``attribute`` as :meth:`LRP.attribute`. ``rules``: extra ``(selector, rule)`` entries
    that override (e.g. for operators the composite has no rule for)."""

    def __init__(
        self,
        model: Model | Backend,
        low: Any = None,
        high: Any = None,
        stabilizer: float = 1e-6,
        rules: Any = None,
        backend: str | Backend = "auto",
        use_logits: bool | None = None,
        **backend_options: Any,
    ) -> None:
        super().__init__(
            model,
            DeepTaylorComposite(low, high, stabilizer, rules),
            backend,
            use_logits=use_logits,
            **backend_options,
        )
