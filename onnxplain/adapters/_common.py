"""What every adapter shares: importing its framework, and checking an export against the original."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxplain.core.errors import ExportError, InputValidationError, OnnxplainError
from onnxplain.core.loading import load
from onnxplain.core.model import Model


class FrameworkNotInstalledError(OnnxplainError, ImportError):
    """An adapter's framework (or its ONNX exporter) is not installed; the message names the
    pip extra that installs it."""


#: Extra advice where ``pip install onnxplain[extra]`` is not the whole story.
_INSTALL_NOTES = {
    # jax2onnx requires the CPU onnxruntime, whose files overwrite onnxruntime-gpu's.
    "jax2onnx": "; where onnxplain uses onnxruntime-gpu, add jax2onnx with "
    "`pip install --no-deps jax2onnx` (its onnxruntime requirement would replace onnxruntime-gpu)",
}


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`FrameworkNotInstalledError` naming ``pip install
    onnxplain[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FrameworkNotInstalledError(
            f"{what or module} is needed to export this model but cannot be imported ({exc}); "
            f"install it with `pip install onnxplain[{extra}]`{_INSTALL_NOTES.get(module, '')}"
        ) from None


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Keep an exporter's warnings, and jax2onnx's log line per optional plugin library
    that is not installed (equinox, dm-pix, ...), out of the user's log."""
    plugin_log = logging.getLogger("jax2onnx")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        plugin_log.setLevel(level)


def as_example(example: Any, name: str = "example") -> np.ndarray:
    """The sample an export is checked on: a float32 batch (N, ...) with N ≥ 1."""
    try:
        x = np.asarray(example)
    except Exception:
        raise InputValidationError(
            f"{name} must be an array-like batch (N, ...), got {type(example).__name__}"
        ) from None
    if x.ndim < 2 or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.number):
        raise InputValidationError(
            f"{name} must be a numeric batch (N, ...) with N ≥ 1, got shape {x.shape} and dtype {x.dtype}"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def check_rtol(rtol: float) -> float:
    if not isinstance(rtol, (int, float)) or isinstance(rtol, bool) or not rtol > 0:
        raise InputValidationError(f"rtol must be a positive number, got {rtol!r}")
    return float(rtol)


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (300 characters at most), for errors that wrap
    what a framework raised."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


#: The check's tolerance for a model that computes in float16 or bfloat16 (Keras'
#: mixed_float16), which the loaded model computes in float32: the framework's own rounding.
HALF_RTOL = 2e-2


def verified_model(
    proto: onnx.ModelProto, example: np.ndarray, expected: Any, rtol: float, source: str,
    **load_options: Any,
) -> Model:
    """Load ``proto`` (with ``load_options``) and check it against the framework on ``example``.

    The check: max |ONNX − framework| ≤ ``rtol`` × max |framework output| over the sample
    (the outputs compared after flattening each example; at least ``HALF_RTOL`` × that for
    a model computed in half precision, which the loaded model computes in float32). Raises
    :class:`ExportError` with the maximum difference when the export disagrees, or when it
    cannot be loaded or run.
    A flattened example (N, F) is given to a model that takes the images it flattens
    (``load``'s ``image_shape``, given or detected) as those images.
    """
    expected = np.asarray(expected, dtype=np.float64)
    try:
        model = load(proto, **load_options)
    except OnnxplainError as exc:
        raise ExportError(f"the {source} export cannot be loaded by onnxplain: {exc}") from exc
    image = model.user_input_shape
    if example.ndim == 2 and image is not None and len(image) > 2:
        example = example.reshape(len(example), *image[1:])
    try:
        got = np.asarray(predict_on_cpu(model, example), dtype=np.float64)
    except Exception as exc:
        raise ExportError(
            f"the {source} export does not run on the example of shape {example.shape}: {first_line(exc)}"
        ) from exc
    n = len(example)
    if got.size != expected.size or got.shape[0] != n:
        raise ExportError(
            f"the {source} export outputs shape {got.shape}, the original {expected.shape} "
            f"(output {model.output_name!r})"
        )
    err = float(np.abs(got.reshape(n, -1) - expected.reshape(n, -1)).max())
    scale = float(np.abs(expected).max())
    half = model.converted_from in ("float16", "bfloat16")
    if half:  # the framework rounds in half precision, the loaded model computes in float32
        rtol = max(rtol, HALF_RTOL)
    if not err <= rtol * max(scale, 1e-12):
        raise ExportError(
            f"the {source} export differs from the original model by max |Δ| = {err:.3g} on the "
            f"example (max |output| {scale:.3g}, allowed rtol={rtol:g} × that"
            f"{', as it computes in ' + model.converted_from if half else ''}); the exporter "
            "mistranslated an operation, or the model is not deterministic"
        )
    model.source = f"<{source} export>"
    return model


_AUTO_PAD_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger"}


def explicit_pads(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``auto_pad="SAME_UPPER"/"SAME_LOWER"`` by explicit ``pads`` where the input's
    spatial size is known (jax2onnx emits SAME; onnx2torch, and so the gradient backend,
    does not implement it). Same arithmetic as the ONNX spec: output = ceil(in / stride),
    total padding = max((out − 1)·stride + (k − 1)·dilation + 1 − in, 0), the odd pixel at
    the end (UPPER) or the start (LOWER)."""
    from onnx import helper, shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # leave the graph as it is; ONNX Runtime still runs it
        return proto
    shapes: dict[str, list[int | None]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if node.op_type not in _AUTO_PAD_OPS or mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        shape = shapes.get(node.input[0])
        if not shape or len(shape) < 3 or any(d is None for d in shape[2:]):
            continue
        spatial = shape[2:]
        if "kernel_shape" in attrs:
            kernel = list(attrs["kernel_shape"])
        elif node.op_type == "Conv" and node.input[1] in weights:
            kernel = weights[node.input[1]][2:]
        else:
            continue
        strides = list(attrs.get("strides", [1] * len(spatial)))
        dilations = list(attrs.get("dilations", [1] * len(spatial)))
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else large)
            end.append(large if mode == "SAME_UPPER" else small)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("pads", begin + end))
    return proto


def keep_output(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Make ``name`` the graph's only output and drop the nodes nothing needs any more."""
    outputs = [o for o in proto.graph.output if o.name == name]
    if not outputs:
        raise InputValidationError(
            f"output must be one of {[o.name for o in proto.graph.output]}, got {name!r}"
        )
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    needed = {name}
    keep = []
    for node in reversed(list(proto.graph.node)):
        if needed.intersection(node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(keep))
    used = {i for n in proto.graph.node for i in n.input}
    inits = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    return proto


def channels_last_unless_shown(proto: onnx.ModelProto) -> str:
    """``"NHWC"`` for images the graph shows no layout for (no convolution, so no transpose
    to channels-first) that look channels-last (1 or 3 on the last axis, not on axis 1):
    the convention of TensorFlow and JAX, the layout their convolutions take by default
    (Flax's, the only one); else ``"auto"``, the layout :func:`onnxplain.load` reads from
    the graph."""
    from onnxplain.core.layout import detect_layout, looks_channels_last

    model = ir.from_proto(proto)
    return "NHWC" if detect_layout(model) == "NCHW" and looks_channels_last(model) is not None else "auto"


def predict_on_cpu(model: Model, x: np.ndarray) -> np.ndarray:
    """The loaded export's outputs for an adapter's check, computed on the CPU: ONNX Runtime's
    CUDA provider computes convolutions and products in TF32 by default (``use_tf32``), whose
    error, about 1e-3 of a value, is no fault of the export. Where the default backend runs on
    the CPU, its session serves (no second one is built)."""
    if model.backend("onnxruntime").device == "cpu":
        return model.predict(x)
    return model.predict(x, device="cpu")
