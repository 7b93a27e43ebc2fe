"""Attention maps: the values of the model's own attention gates, as the survey's
"attention as a mask" family reads them.

The gates are found on the graph (:mod:`onnxplain.core.attention`): squeeze-and-excitation
(Hu et al., CVPR 2018) and CBAM's channel and spatial gates (Woo et al., ECCV 2018). For
an input x, a channel gate gives one weight per channel, g(x) ∈ (0, 1)ᶜ; a spatial gate
gives one weight per position of its feature map, g(x) ∈ (0, 1)ʰˣʷ, upsampled bilinearly
to the input's H × W. Forward passes only (ONNX Runtime by default), the gate tensors
fetched as extra outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.attention import AttentionGate, find_attention_gates
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.methods._resize import resize_bilinear
from onnxplain.methods.base import Attribution


class AttentionMaps(Attribution):
    """The values of every attention gate of the model, by gate name.

    ``gates`` lists what was found (``model.attention_gates()``); a model without gates
    raises :class:`~onnxplain.core.errors.InputValidationError`.

    >>> import onnxplain as ox
    >>> model = ox.examples.shapes_model()
    >>> images, labels, masks = ox.examples.shapes_dataset(2, seed=5)
    >>> from onnxplain.methods.global_views import AttentionMaps
    >>> maps = AttentionMaps(model).attribute(images)
    >>> [(name, values.shape) for name, values in maps.items()]
    [('se', (2, 48))]
    """

    requires = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})

    def __init__(
        self, model: Model | Backend, backend: str | Backend = "auto", **backend_options: Any
    ) -> None:
        super().__init__(model, backend, **backend_options)
        self.gates: list[AttentionGate] = find_attention_gates(self.model) if self.model is not None else []
        if not self.gates:
            raise InputValidationError(
                "AttentionMaps found no squeeze-and-excitation or CBAM gate in the model; "
                "model.attention_gates() lists the gates recognised (see onnxplain.core.attention)"
            )

    def attribute(
        self, inputs: Any, gates: Sequence[str] | None = None, upsample: bool = True
    ) -> dict[str, np.ndarray]:
        """Gate values for ``inputs`` (N, C, H, W): name → array, in graph order.

        Channel gates (``"se"``, ``"cbam_channel"``) give (N, C). Spatial gates
        (``"cbam_spatial"``) give (N, H, W) at the input's size (``upsample=False``: at the
        gate's own h × w). ``gates``: names to compute (default: all).
        """
        x = self._inputs(inputs)
        chosen = self._select(gates)
        values = self.backend.forward(x, outputs=list(dict.fromkeys(g.gate for g in chosen)))
        out: dict[str, np.ndarray] = {}
        for gate in chosen:
            v = np.asarray(values[gate.gate])
            if gate.spatial:
                v = v.reshape(len(x), *v.shape[-2:])
                if upsample and x.ndim == 4 and v.shape[-2:] != x.shape[-2:]:
                    v = resize_bilinear(v, tuple(x.shape[-2:]))
            else:
                v = v.reshape(len(x), -1)
            out[gate.name] = v
        return out

    def _select(self, names: Sequence[str] | None) -> list[AttentionGate]:
        if names is None:
            return list(self.gates)
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise InputValidationError(f"gates: give gate names (a str or a list of them), got {names!r}")
        by_name = {g.name: g for g in self.gates}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InputValidationError(f"gates: no gate named {unknown}; the model has {list(by_name)}")
        return [by_name[n] for n in names]
