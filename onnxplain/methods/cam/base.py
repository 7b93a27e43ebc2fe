"""The class-activation-map base: a variant only says how the channels are weighted.

    L^c = ReLU( Σ_k w_k^c A^k )

``A`` is the feature map of ``layer`` (N, K, h, w) and ``c`` the target; a vision
transformer's (N, tokens, C) layer is read as the (N, C, h, w) grid of its patch tokens
(:mod:`onnxplain.methods.cam._tokens`, pytorch-grad-cam's ``reshape_transform``). A variant
implements one of two extension points, both given a :class:`LayerData`:

- ``channel_weights(data) -> (N, K)``: the weights ``w_k^c`` (CAM, Grad-CAM, Grad-CAM++,
  XGrad-CAM, Score-CAM, Ablation-CAM);
- ``raw_map(data) -> (N, h, w)``: the map before the ReLU, for variants that are not a
  channel-weighted sum (LayerCAM and HiResCAM weight element-wise, EigenCAM projects).

Everything else lives here, once: the layer (``"auto"``: see
:meth:`onnxplain.Model.find_layer`), targets (:mod:`onnxplain.core.targets`), the
activations and gradients from the backend, the ReLU, bilinear upsampling to the input
size and per-example min-max normalisation. A variant that needs only forward passes sets
``requires`` to FORWARD + ACTIVATIONS and runs on ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pydantic

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import LayerSpec, Model
from onnxplain.core.targets import Objective, TargetLike, resolve_target
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods._resize import resize_bilinear
from onnxplain.methods.base import Attribution
from onnxplain.methods.cam._tokens import TokenGrid, is_token_layer


@dataclass
class LayerData:
    """What a CAM variant computes its map from, for a batch of N examples.

    ``inputs``: x (N, C, H, W); ``objective``: the resolved target; ``scores``: the
    target's score y^c per example (N,); ``activations``: A (N, K, h, w);
    ``gradients``: ∂y^c/∂A (N, K, h, w), or None for forward-only variants;
    ``show_progress``: for variants that loop (tqdm, see ``Attribution._progress``);
    ``raw``: the layer's tensor as the model computes it, ``grid``: for a transformer's
    token layer, how ``activations`` and ``gradients`` were read from its patch tokens
    (None for a feature map, where ``raw`` is ``activations``); ``carried``: the tensors
    named in the variant's ``carried`` (forward-only variants), by name.
    """

    inputs: np.ndarray
    objective: Objective
    scores: np.ndarray
    activations: np.ndarray
    gradients: np.ndarray | None
    show_progress: bool | None = None
    raw: np.ndarray | None = None
    grid: TokenGrid | None = None
    carried: dict[str, np.ndarray] = field(default_factory=dict)


class _CAMParams(Params):
    relu_attributions: pydantic.StrictBool
    upsample: pydantic.StrictBool
    normalize: pydantic.StrictBool
    show_progress: pydantic.StrictBool | None


class CAMBase(Attribution):
    """Base of the CAM family.

    ``layer``: a tensor or node name from ``model.layers()``, a ``LayerSpec``, or
    ``"auto"`` (the input of the last global pooling: the last spatial feature map).
    ``backend``: ``"auto"`` picks ONNX Runtime for forward-only variants and torch for
    gradient variants; see :class:`~onnxplain.methods.base.Attribution`.
    """

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.ACTIVATIONS, Capability.GRADIENTS})
    prefers_logits: ClassVar[bool | None] = True

    def __init__(self, model: Model | Backend, layer: str | LayerSpec = "auto",
                 backend: str | Backend = "auto", **backend_options: Any) -> None:
        super().__init__(model, backend, **backend_options)
        name = type(self).__name__
        if self.model is None:
            raise InputValidationError(f"{name} needs a Model to find its layer")
        if isinstance(layer, LayerSpec):
            layer = layer.name
        if not isinstance(layer, str):
            raise InputValidationError(
                f"{name}: layer must be a tensor name from model.layers() or 'auto', got {layer!r}"
            )
        self.layer = self._find_layer(layer)
        #: tensors besides the layer that a forward-only variant also reads per example
        self.carried: list[str] = []
        #: a (N, tokens, C) layer of a vision transformer, read as its patch grid
        self.tokens = is_token_layer(self.layer.shape, self.model.batch_dim)
        if len(self.layer.shape) != 4 and not self.tokens:
            raise InputValidationError(
                f"layer {self.layer.name!r} has shape {self.layer.shape}; CAMs need a 4-D "
                "(N, C, H, W) feature map (see model.layers()) or a transformer's (N, tokens, C) "
                "layer of patch tokens"
            )

    def _find_layer(self, layer: str) -> LayerSpec:
        # a channels-last map (Keras/tf2onnx exports) is read through its channels-first twin
        return self.model.channels_first_layer(self.model.find_layer(layer))

    # -- the extension points ----------------------------------------------------------
    def channel_weights(self, data: LayerData) -> np.ndarray:
        """The weights w_k^c, (N, K)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither channel_weights nor raw_map")

    def raw_map(self, data: LayerData) -> np.ndarray:
        """The map at the layer's resolution before the ReLU, (N, h, w): Σ_k w_k^c A^k."""
        weights = np.asarray(self.channel_weights(data), dtype=np.float64)
        return np.einsum("nk,nkhw->nhw", weights, data.activations.astype(np.float64))

    # -- the method --------------------------------------------------------------------
    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        relu_attributions: bool = True,
        upsample: bool = True,
        normalize: bool = False,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """The class activation map per example, float32.

        Shape (N, H, W), bilinearly upsampled to the input's size (``align_corners=False``,
        like ``torch.nn.functional.interpolate``), or (N, h, w) at the layer's size with
        ``upsample=False``. ``relu_attributions``: keep only the positive part (the
        papers' ReLU). ``normalize``: min-max scale each map to [0, 1] after the ReLU and
        the upsampling, as pytorch-grad-cam does (a constant map becomes 0).
        ``target``: see :mod:`onnxplain.core.targets`. ``show_progress``: a progress bar
        for the variants that loop over channels (None: on terminals only).
        """
        return self._map(inputs, target, relu_attributions, upsample, normalize, show_progress)

    def _map(self, inputs: Any, target: TargetLike, relu_attributions: bool, upsample: bool, normalize: bool,
             show_progress: bool | None, **layer_options: Any) -> np.ndarray:
        """:meth:`attribute`'s work, with a variant's own options for its ``_layer_data``."""
        p = validate_params(_CAMParams, type(self).__name__, relu_attributions=relu_attributions,
                            upsample=upsample, normalize=normalize, show_progress=show_progress)
        x = self._inputs(inputs)
        data = self._layer_data(x, target, p.show_progress, **layer_options)
        cam = np.asarray(self.raw_map(data), dtype=np.float64)
        if p.relu_attributions:
            cam = np.maximum(cam, 0)
        if p.upsample:
            if x.ndim != 4:
                raise InputValidationError(
                    f"upsample=True needs (N, C, H, W) inputs, got shape {x.shape}; pass upsample=False"
                )
            cam = resize_bilinear(cam, x.shape[2:])
        if p.normalize:
            cam = normalize_maps(cam)
        return cam.astype(np.float32)

    def _grid(self, x: np.ndarray, a: np.ndarray) -> TokenGrid | None:
        """The patch grid of a token layer's activations ``a`` for inputs ``x``; None for maps."""
        if not self.tokens:
            return None
        if x.ndim != 4 or a.ndim != 3:
            raise InputValidationError(
                f"layer {self.layer.name!r} is a token layer: it needs (N, C, H, W) image inputs, "
                f"got inputs of shape {x.shape} and tokens of shape {a.shape}"
            )
        return TokenGrid.infer(self.layer.name, a.shape[1], x.shape[2:])

    def _layer_data(self, x: np.ndarray, target: TargetLike, show_progress: bool | None) -> LayerData:
        name = self.layer.name
        if Capability.GRADIENTS in self.requires:
            objective = self._objective(x, target)
            res = self.backend.gradients(x, objective, wrt=[name])
            a, g = res.activations[name], res.gradients[name]
            grid = self._grid(x, a)
            if grid is not None:
                a, g = grid.to_grid(a), grid.to_grid(g)
            return LayerData(x, objective, res.scores, a, g, show_progress, raw=res.activations[name],
                             grid=grid)
        output = self._output_tensor()
        outs = self.backend.forward(x, outputs=list(dict.fromkeys([name, output, *self.carried])))
        objective = resolve_target(target, len(x), output, self.model.num_classes,
                                   predict=lambda: outs[output])
        self._note(objective)
        if objective.tensor not in outs:
            outs.update(self.backend.forward(x, outputs=[objective.tensor]))
        scores = np.asarray(objective.scores(outs[objective.tensor]), dtype=np.float64)
        grid = self._grid(x, outs[name])
        a = outs[name] if grid is None else grid.to_grid(outs[name])
        return LayerData(x, objective, scores, a, None, show_progress, raw=outs[name], grid=grid,
                         carried={c: outs[c] for c in self.carried})


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each map (N, ...) to [0, 1]; a constant map becomes all zeros."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1).reshape(-1, *([1] * (maps.ndim - 1)))
    span = flat.max(axis=1).reshape(low.shape) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0.0)


def min_max_masks(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (h, w) map of (N, h, w) scaled to [0, 1], and which maps are constant
    (those come back as zeros)."""
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    constant = high <= low
    span = np.where(constant, 1, high - low).astype(maps.dtype)
    masks = maps - low[:, None, None]  # in place from here: one (N, h, w) array
    masks /= span[:, None, None]
    masks[constant] = 0
    return masks, constant
