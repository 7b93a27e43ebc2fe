"""TensorFlow's image resizes that tf2onnx cannot convert, written as two matrix products.

``tf.image.resize`` with ``antialias=True``, or with a Lanczos, Gaussian or Mitchell kernel
(Keras' ``Resizing(antialias=True)``, ``interpolation="lanczos3"``, ...), computes
``ScaleAndTranslate``, which tf2onnx leaves unconverted; ``method="area"`` computes
``ResizeArea``, which tf2onnx converts into something else (it differed from TensorFlow by
12 % of the output on a test model). Both are separable linear maps of the two spatial
axes with weights fixed by the input and output sizes, which the exported graph knows: the
images' height and width are static (the adapter exports a dynamic batch only) and the size,
scale and translation come from them. Each node is replaced by NHWC → (N, C, H, W) @ A_wᵀ →
(N, C, w, H) @ Aₕᵀ → NHWC, with Aₕ and A_w computed here as TensorFlow defines them
(``scale_and_translate_op.cc``'s spans, ``resize_area_op.cc``'s overlaps).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxplain.core.errors import ExportError

#: The domain tf2onnx's handler for ResizeArea writes its placeholder in.
DOMAIN = "onnxplain.tensorflow"
Kernel = Callable[[np.ndarray], np.ndarray]


def _lanczos(radius: int) -> Kernel:
    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        with np.errstate(all="ignore"):
            value = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius) / (np.pi**2 * x * x)
        return np.where(x > radius, 0.0, np.where(x <= 1e-3, 1.0, value))

    return kernel


def _cubic(b: float, c: float) -> Kernel:
    """Mitchell–Netravali's family: Keys (b=0, c=0.5), Mitchell (b=c=1/3)."""

    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((12 - 9 * b - 6 * c) * x**3 + (-18 + 12 * b + 6 * c) * x**2 + (6 - 2 * b)) / 6
        far = ((-b - 6 * c) * x**3 + (6 * b + 30 * c) * x**2 + (-12 * b - 48 * c) * x + (8 * b + 24 * c)) / 6
        return np.where(x >= 2, 0.0, np.where(x >= 1, far, near))

    return kernel


#: TensorFlow's sampling kernels (sampling_kernels.h): function and radius.
KERNELS: dict[str, tuple[Kernel, float]] = {
    "lanczos1": (_lanczos(1), 1.0),
    "lanczos3": (_lanczos(3), 3.0),
    "lanczos5": (_lanczos(5), 5.0),
    "gaussian": (lambda x: np.where(np.abs(x) >= 1.5, 0.0, np.exp(-x * x / 0.5)), 1.5),  # σ = 0.5
    "box": (lambda x: np.where(np.abs(x) < 0.5, 1.0, np.where(np.abs(x) == 0.5, 0.5, 0.0)), 1.0),
    "triangle": (lambda x: np.maximum(0.0, 1.0 - np.abs(x)), 1.0),
    "keyscubic": (_cubic(0.0, 0.5), 2.0),
    "mitchellcubic": (_cubic(1 / 3, 1 / 3), 2.0),
}


def scale_and_translate_weights(kernel_type: str, size: int, out: int, scale: float, translate: float,
                                antialias: bool) -> np.ndarray:
    """The (out, size) matrix ``ScaleAndTranslate`` applies to one axis."""
    if kernel_type not in KERNELS:
        raise ExportError(f"ScaleAndTranslate with kernel_type={kernel_type!r} is not known to onnxplain")
    kernel, radius = KERNELS[kernel_type]
    f = np.float32
    inv_scale = f(1) / f(scale)
    inv_translate = -inv_scale * f(translate)
    widen = max(inv_scale, f(1)) if antialias else f(1)
    matrix = np.zeros((out, size))
    for y in range(out):
        sample = (f(y) + f(0.5)) * inv_scale + inv_translate
        if sample < 0 or sample > size:  # outside the source image: nothing sampled
            continue
        start = min(max(int(math.ceil(sample - f(radius) * widen - f(0.5))), 0), size - 1)
        end = min(max(int(math.floor(sample + f(radius) * widen - f(0.5))), 0), size - 1) + 1
        source = np.arange(start, end)
        w = kernel((source + 0.5 - float(sample)) / float(widen))
        total = w.sum()
        if abs(total) >= 1000 * np.finfo(np.float32).tiny:
            w = w / total
        matrix[y, start:end] = w
    return matrix


def area_weights(size: int, out: int, align_corners: bool) -> np.ndarray:
    """The (out, size) matrix ``ResizeArea`` applies to one axis: each output averages the
    source pixels its footprint overlaps, by the length of the overlap."""
    scale = (size - 1) / (out - 1) if align_corners and out > 1 else size / out
    matrix = np.zeros((out, size))
    for y in range(out):
        low, high = y * scale, (y + 1) * scale
        for i in range(int(math.floor(low)), int(math.ceil(high))):
            overlap = (high - i if i + 1 > high else 1.0) - (low - i if i < low else 0.0)
            matrix[y, min(i, size - 1)] += overlap / scale
    return matrix


def resize_area_handler(ctx, node, name, args):  # noqa: ANN001, ANN201 (tf2onnx's handler signature)
    """tf2onnx custom-op handler: keep ``ResizeArea`` as a placeholder in our domain, which
    :func:`rewrite` replaces (tf2onnx's own conversion of it is wrong)."""
    node.domain = DOMAIN
    return node


def _ancestors(graph: onnx.GraphProto, names: list[str]) -> list[onnx.NodeProto]:
    producer = {out: node for node in graph.node for out in node.output}
    wanted, stack, seen = set(), list(names), set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        wanted.add(id(node))
        stack.extend(i for i in node.input if i)
    return [n for n in graph.node if id(n) in wanted]


def _evaluate(proto: onnx.ModelProto, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    """The values of tensors ``names`` of the graph on input ``x`` (ONNX Runtime on the
    nodes they are computed from)."""
    import onnxruntime as ort

    graph = helper.make_graph(
        _ancestors(proto.graph, names), "values", list(proto.graph.input),
        [helper.make_empty_tensor_value_info(n) for n in names],  # types left to ONNX Runtime
        list(proto.graph.initializer),
    )
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, {proto.graph.input[0].name: x})


def _is_tf_resize(node: onnx.NodeProto) -> bool:
    return (node.op_type == "ScaleAndTranslate" and node.domain in ("", "ai.onnx")) or (
        node.op_type == "ResizeArea" and node.domain == DOMAIN
    )


def rewrite(proto: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """``proto`` with each ScaleAndTranslate and ResizeArea replaced by its two matrix
    products (see the module); ``x`` is an input the graph runs on."""
    while True:
        index = next((i for i, n in enumerate(proto.graph.node) if _is_tf_resize(n)), None)
        if index is None:
            return proto
        node = proto.graph.node[index]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input)
        other = np.random.default_rng(0).standard_normal(x.shape).astype(x.dtype)
        try:
            values = _evaluate(proto, inputs, x)
            again = _evaluate(proto, inputs[1:], other)
        except Exception as exc:
            raise ExportError(
                f"the sizes of TensorFlow's {node.op_type} could not be computed: {exc}"
            ) from exc
        if any(not np.array_equal(a, b) for a, b in zip(values[1:], again)):
            raise ExportError(f"TensorFlow's {node.op_type} resizes by amounts that depend on the pixels")
        images = values[0]
        if images.ndim != 4:
            raise ExportError(f"TensorFlow's {node.op_type} on a rank-{images.ndim} tensor")
        (h, w), (oh, ow) = images.shape[1:3], [int(v) for v in values[1]]
        if node.op_type == "ResizeArea":
            corners = bool(attrs.get("align_corners", 0))
            ah, aw = area_weights(h, oh, corners), area_weights(w, ow, corners)
        else:
            scale, shift = [float(v) for v in values[2]], [float(v) for v in values[3]]
            kind = attrs.get("kernel_type", b"lanczos3")
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            antialias = bool(attrs.get("antialias", 1))
            ah = scale_and_translate_weights(kind, h, oh, scale[0], shift[0], antialias)
            aw = scale_and_translate_weights(kind, w, ow, scale[1], shift[1], antialias)
        stem = f"{node.name or node.output[0]}_resize"
        dtype = images.dtype
        proto.graph.initializer.extend([
            numpy_helper.from_array(ah.T.astype(dtype), f"{stem}_rows"),
            numpy_helper.from_array(aw.T.astype(dtype), f"{stem}_columns"),
        ])
        replacement = [  # starting with the transpose to NCHW that shows the layout
            helper.make_node("Transpose", [inputs[0]], [f"{stem}_nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("MatMul", [f"{stem}_nchw", f"{stem}_columns"], [f"{stem}_w"]),
            helper.make_node("Transpose", [f"{stem}_w"], [f"{stem}_wt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [f"{stem}_wt", f"{stem}_rows"], [f"{stem}_wh"]),
            helper.make_node("Transpose", [f"{stem}_wh"], [node.output[0]], perm=[0, 3, 2, 1]),
        ]
        del proto.graph.node[index]
        for offset, new in enumerate(replacement):
            proto.graph.node.insert(index + offset, new)
