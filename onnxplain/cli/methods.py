"""The methods the command line knows: CLI names → classes that ``onnxplain`` exports.

The registry maps a CLI name to candidate class names and the keyword arguments the
command line uses by default (kept small, so ``onnxplain demo`` stays quick). It is
read at run time against what ``onnxplain`` exports: names whose class is absent are
skipped, keyword arguments a class does not take are dropped, and an exported
:class:`~onnxplain.methods.base.Attribution` subclass that the registry does not list is
added under its kebab-case name when it needs nothing beyond the model and the inputs.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError

Shape = tuple[int, ...]
KwargsLike = Mapping[str, Any] | Callable[[Shape, str], Mapping[str, Any]]


def _chw(shape: Shape, layout: str) -> tuple[int, int, int]:
    return (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])


def _occlusion(shape: Shape, layout: str) -> dict[str, Any]:
    """A window of 1/8 of the image, moved by 1/16, over all channels."""
    c, h, w = _chw(shape, layout)
    wh, ww = max(1, h // 8), max(1, w // 8)
    sh, sw = max(1, h // 16), max(1, w // 16)
    if layout == "NCHW":
        return {"sliding_window_shapes": (c, wh, ww), "strides": (c, sh, sw)}
    return {"sliding_window_shapes": (wh, ww, c), "strides": (sh, sw, c)}


def patch_mask(shape: Shape, layout: str, cells: int = 8) -> np.ndarray:
    """A ``feature_mask`` of ``cells`` × ``cells`` square patches over all channels,
    (1, 1, H, W) or (1, H, W, 1): the interpretable features of the surrogate methods."""
    _, h, w = _chw(shape, layout)
    rows = np.minimum(np.arange(h) * cells // h, cells - 1)
    cols = np.minimum(np.arange(w) * cells // w, cells - 1)
    ids = (rows[:, None] * cells + cols[None, :]).astype(np.int64)
    return ids[None, None] if layout == "NCHW" else ids[None, :, :, None]


def _with_patches(**kwargs: Any) -> Callable[[Shape, str], dict[str, Any]]:
    def make(shape: Shape, layout: str) -> dict[str, Any]:
        return {"feature_mask": patch_mask(shape, layout), **kwargs}

    return make


def _extremal(shape: Shape, layout: str) -> dict[str, Any]:
    """TorchRay's mask step and blur sizes are for 224-pixel images; scale them."""
    _, h, _ = _chw(shape, layout)
    scale = h / 224
    return {"max_iter": 200, "step": max(1, round(7 * scale)), "sigma": 21 * scale, "max_blur": 20 * scale}


@dataclass(frozen=True)
class MethodEntry:
    """``classes``: candidate class names in ``onnxplain`` (the first present is used);
    ``init``/``attribute``: default keyword arguments (a mapping, or a function of the
    input shape and layout); ``sign`` and ``subtract_min``: how the CLI shows the
    attribution (see :func:`onnxplain.viz.attribution_map`); ``slow``: an
    optimisation per image, left out of ``all`` unless asked for (``all+slow``)."""

    name: str
    classes: tuple[str, ...]
    family: str
    init: KwargsLike = field(default_factory=dict)
    attribute: KwargsLike = field(default_factory=dict)
    sign: str = "absolute"
    subtract_min: bool = False
    slow: bool = False


# Ordered by family, as the columns of the comparison figure. Keyword arguments a class
# does not take are dropped, so candidates for methods still being written are harmless.
REGISTRY: tuple[MethodEntry, ...] = (
    MethodEntry("saliency", ("Saliency",), "gradient"),
    MethodEntry("input-x-gradient", ("InputXGradient",), "gradient"),
    MethodEntry("integrated-gradients", ("IntegratedGradients",), "gradient", attribute={"n_steps": 32}),
    MethodEntry("smoothgrad", ("SmoothGrad",), "gradient", attribute={"nt_samples": 16}),
    MethodEntry("guided-backprop", ("GuidedBackprop", "GuidedBackpropagation"), "rules"),
    MethodEntry("deconvnet", ("Deconvolution", "Deconvnet", "DeconvNet"), "rules"),
    MethodEntry("rectgrad", ("RectGrad",), "rules"),
    MethodEntry("lrp", ("LRP", "LayerwiseRelevancePropagation"), "rules"),
    MethodEntry("deep-taylor", ("DeepTaylor", "DeepTaylorDecomposition"), "rules"),
    MethodEntry("clrp", ("CLRP", "ContrastiveLRP"), "rules"),
    MethodEntry("sglrp", ("SGLRP", "SoftmaxGradientLRP"), "rules"),
    MethodEntry("cam", ("CAM",), "cam"),
    MethodEntry("gradcam", ("GradCAM",), "cam"),
    MethodEntry("gradcam++", ("GradCAMPlusPlus",), "cam"),
    MethodEntry("smooth-gradcam++", ("SmoothGradCAMPlusPlus",), "cam", attribute={"nt_samples": 8}),
    MethodEntry("xgradcam", ("XGradCAM",), "cam"),
    MethodEntry("layercam", ("LayerCAM",), "cam"),
    MethodEntry("hirescam", ("HiResCAM",), "cam"),
    MethodEntry("eigencam", ("EigenCAM",), "cam"),
    MethodEntry("scorecam", ("ScoreCAM",), "cam"),
    MethodEntry("ablationcam", ("AblationCAM",), "cam"),
    MethodEntry("guided-gradcam", ("GuidedGradCAM",), "cam"),
    MethodEntry("attention", ("AttentionMap", "AttentionMask", "GateMap"), "attention"),
    MethodEntry("occlusion", ("Occlusion",), "perturbation", attribute=_occlusion, sign="positive"),
    MethodEntry("feature-ablation", ("FeatureAblation",), "perturbation", attribute=_with_patches(),
                sign="positive"),
    MethodEntry("rise", ("RISE",), "perturbation", attribute={"n_masks": 1000}, subtract_min=True),
    MethodEntry("meaningful-perturbation", ("MeaningfulPerturbation",), "perturbation",
                attribute={"max_iter": 150}, slow=True),
    MethodEntry("extremal-perturbation", ("ExtremalPerturbation",), "perturbation", attribute=_extremal,
                slow=True),
    MethodEntry("lime", ("Lime", "LIME"), "surrogate", attribute=_with_patches(n_samples=300),
                sign="positive"),
    MethodEntry("kernel-shap", ("KernelShap", "KernelSHAP"), "surrogate",
                attribute=_with_patches(n_samples=300), sign="positive"),
    MethodEntry("shapley-value-sampling", ("ShapleyValueSampling",), "surrogate",
                attribute=_with_patches(n_samples=6), sign="positive"),
)

# Exported classes that are bases or wrappers, not methods of their own.
_NOT_METHODS = {"Attribution", "CAMBase", "PerturbationAttribution", "SurrogateAttribution",
                "ModifiedReluGradient", "LayerAttribution", "NoiseTunnel"}


def kebab(name: str) -> str:
    """``GradCAMPlusPlus`` → ``grad-cam-plus-plus``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def _accepts(func: Callable, kwargs: Mapping[str, Any], var_keyword: bool = True) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``func`` names; all of them if it has ``**kwargs``
    and ``var_keyword`` (a constructor's ``**kwargs`` are backend options: not for us)."""
    params = inspect.signature(func).parameters
    if var_keyword and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return {k: v for k, v in kwargs.items() if k in named}


def _required(func: Callable, skip: int) -> list[str]:
    params = list(inspect.signature(func).parameters.values())[skip:]
    return [p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@dataclass(frozen=True)
class Method:
    """A registry entry bound to the class that implements it."""

    name: str
    cls: type
    entry: MethodEntry

    @property
    def requires(self) -> frozenset:
        return frozenset(getattr(self.cls, "requires", frozenset()))

    def init_kwargs(self, shape: Shape, layout: str, **extra: Any) -> dict[str, Any]:
        init = self.entry.init(shape, layout) if callable(self.entry.init) else dict(self.entry.init)
        extra = {k: v for k, v in extra.items() if v is not None}
        return _accepts(self.cls.__init__, {**init, **extra}, var_keyword=False)

    def attribute_kwargs(self, shape: Shape, layout: str, **extra: Any) -> dict[str, Any]:
        base = self.entry.attribute
        kwargs = base(shape, layout) if callable(base) else dict(base)
        return _accepts(self.cls.attribute, {**kwargs, **{k: v for k, v in extra.items() if v is not None}})


def available() -> dict[str, Method]:
    """The methods this installation of onnxplain provides, by CLI name, in figure order."""
    import onnxplain
    from onnxplain.methods.base import Attribution

    found: dict[str, Method] = {}
    claimed: set[str] = set()
    for entry in REGISTRY:
        claimed.update(entry.classes)
        for class_name in entry.classes:
            cls = getattr(onnxplain, class_name, None)
            if isinstance(cls, type) and issubclass(cls, Attribution):
                found[entry.name] = Method(entry.name, cls, entry)
                break
    for attr in sorted(getattr(onnxplain, "__all__", dir(onnxplain))):
        cls = getattr(onnxplain, attr, None)
        if (not isinstance(cls, type) or not issubclass(cls, Attribution) or attr in claimed
                or attr in _NOT_METHODS or attr.endswith("Base") or inspect.isabstract(cls)):
            continue
        # Only what runs with the model and the inputs alone.
        try:
            params = list(inspect.signature(cls.__init__).parameters)
            if params[1:2] != ["model"] or _required(cls.__init__, 2) or _required(cls.attribute, 2):
                continue
        except (AttributeError, TypeError, ValueError):  # no attribute(), or no signature
            continue
        name = kebab(attr)
        if name not in found:
            found[name] = Method(name, cls, MethodEntry(name, (attr,), "other"))
    return found


def resolve(names: str | list[str] | None, default: str = "all") -> list[Method]:
    """Methods by comma-separated CLI names, ``"all"`` (every method not marked slow) or
    ``"all+slow"``; an unknown name is an :class:`InputValidationError` listing the
    available ones."""
    methods = available()
    if names is None:
        names = default
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise InputValidationError("no method given; available: " + ", ".join(methods))
    if names == ["all"]:
        return [m for m in methods.values() if not m.entry.slow]
    if names == ["all+slow"]:
        return list(methods.values())
    out = []
    for name in names:
        key = name.lower()
        if key not in methods:
            known = [e.name for e in REGISTRY]
            hint = (f"{name!r} is not part of this onnxplain installation yet" if key in known
                    else f"unknown method {name!r}")
            raise InputValidationError(f"{hint}; available: {', '.join(methods)}")
        if methods[key] not in out:
            out.append(methods[key])
    return out


def as_maps_or_inputs(attr: Any, x: np.ndarray, name: str) -> np.ndarray:
    """Check that a method returned input-shaped attributions or (N, H, W) maps."""
    if isinstance(attr, tuple):  # e.g. (attributions, delta)
        attr = attr[0]
    attr = np.asarray(attr)
    n = x.shape[0]
    if attr.shape == x.shape or (attr.ndim == 3 and attr.shape[0] == n):
        return attr
    raise InputValidationError(
        f"{name} returned attributions of shape {attr.shape} for inputs of shape {x.shape}; "
        "the command line shows input-shaped attributions or (N, H, W) maps"
    )
