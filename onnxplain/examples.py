"""Small ONNX models built in code, for examples, doctests and tests (no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(channels: int = 4, classes: int = 3, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → Gemm, input (N, 3, H, W).

    Height and width are dynamic; weights are seeded random numbers.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["features"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            init("w1", channels, 3, 3, 3), init("b1", channels),
            init("w2", channels, channels, 3, 3), init("b2", channels),
            init("fc_w", classes, channels), init("fc_b", classes),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- the bundled example: a CNN trained on procedurally generated shapes -----------------
def shapes_info() -> dict:
    """The model card of :func:`shapes_model`: classes, preprocessing, the generator's
    seeds, accuracy and how it was trained (``onnxplain/data/shapes_cnn.json``)."""
    import json

    from onnxplain.data import path

    return json.loads(path("shapes_cnn.json").read_text())


def shapes_model_path() -> str:
    """The file path of the bundled ``shapes_cnn.onnx``."""
    from onnxplain.data import path

    return str(path("shapes_cnn.onnx"))


def shapes_model():
    """The bundled example model, loaded: a ~26k-parameter CNN (Conv–BatchNorm–ReLU,
    squeeze-and-excitation, GAP → FC) that classifies :func:`shapes_dataset` images
    (N, 3, 64, 64), values in [0, 1], into ``shapes_info()["classes"]``.

    >>> import onnxplain as ox
    >>> model = ox.examples.shapes_model()
    >>> images, labels, masks = ox.examples.shapes_dataset(8, seed=123)
    >>> model.predict(images).shape
    (8, 5)
    """
    from onnxplain.core.loading import load

    return load(shapes_model_path())


def shapes_dataset(n: int = 16, seed: int = 0, clutter: bool = True):
    """``n`` generated images (N, 3, 64, 64) float32 in [0, 1], their labels (N,) and
    object masks (N, 64, 64) bool, as a named tuple ``(images, labels, masks)``.

    Seeds 1–3 made the model's training, validation and test sets
    (``shapes_info()["generator"]``); any other seed gives images it has never seen.
    """
    from onnxplain.data import shapes

    return shapes.generate(n, seed=seed, clutter=clutter)
