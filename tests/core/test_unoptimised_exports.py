"""torch's dynamo exporter with its optimiser off (``torch.onnx.export(..., dynamo=True,
optimize=False)``) writes the graph as it traced it: ``CastLike`` for every Python scalar,
a zero bias made by ``Expand`` for each convolution without one, ``Reshape(allowzero=1)``
to shapes computed from the input's ``Shape``, and ``torch.chunk`` as ``SplitToSequence``
→ ``SequenceAt`` (ShuffleNet). onnx2torch converts none of these, and shape inference
typed the sequence as a tensor, which ONNX Runtime refused. Loaded, such a file explains
as the optimised export of the same module does, and as Captum on the module."""

import io

import numpy as np
import pytest
import torch
import torchvision
from helpers import max_rel_err

import onnxplain as ox

TOL = 1e-4


def _export(net: torch.nn.Module, x: torch.Tensor, optimize: bool) -> ox.Model:
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=True, optimize=optimize, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    return ox.load(buffer.getvalue())


@pytest.fixture(scope="module")
def pair():
    """ResNet-18: convolutions without bias, a dynamic flatten, Python scalars (checked by
    hand on ShuffleNet's torch.chunk, MobileNetV3, EfficientNet, ConvNeXt, ViT, Swin,
    DenseNet, Inception-v3, GoogLeNet, SqueezeNet and RegNet too; SplitToSequence is tested
    below on a graph of its own)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.rand(2, 3, 64, 64)
    return net, x.numpy(), _export(net, x, optimize=True), _export(net, x, optimize=False)


def test_the_unoptimised_export_loads_without_what_onnx2torch_refuses(pair):
    _, x, _, raw = pair
    ops = {node.op_type for node in raw.ir.graph}
    assert "CastLike" not in ops
    allowzero = [node.attributes.get("allowzero") for node in raw.ir.graph if node.op_type == "Reshape"]
    assert allowzero and all(a is None or a.as_int() == 0 for a in allowzero)
    assert raw.predict(x[:1]).shape == (1, 5)  # the batch stays dynamic


def test_it_explains_as_the_optimised_export_and_as_captum(pair):
    from captum.attr import Saliency

    net, x, optimised, raw = pair
    assert max_rel_err(raw.predict(x), net(torch.from_numpy(x)).detach().numpy()) < 1e-5
    reference = Saliency(net).attribute(torch.from_numpy(x).requires_grad_(True), target=1, abs=False)
    assert max_rel_err(ox.Saliency(raw).attribute(x, target=1, abs=False), reference.numpy()) < TOL
    for method in (ox.GradCAM, ox.LRP):
        ours, theirs = (method(m).attribute(x, target=1) for m in (raw, optimised))
        assert np.abs(theirs).max() > 0 and max_rel_err(ours, theirs) < TOL, method.__name__


@pytest.mark.parametrize("split", [np.array(2, np.int64), np.array([3, 2], np.int64)])
def test_split_to_sequence_with_constant_indices_becomes_a_split(split):
    """A scalar split (pieces of 2, the last one shorter) or the sizes themselves; the
    pieces taken at indices 0 and −1 (negative counts from the end), then concatenated."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Conv", ["input", "w"], ["c"]),
             helper.make_node("SplitToSequence", ["c", "split"], ["seq"], axis=1),
             helper.make_node("SequenceAt", ["seq", "first"], ["a"]),
             helper.make_node("SequenceAt", ["seq", "last"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("ReduceMean", ["ab"], ["scores"], axes=[2, 3], keepdims=0)]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(split, "split"), numpy_helper.from_array(np.array(0, np.int64), "first"),
             numpy_helper.from_array(np.array(-1, np.int64), "last")]
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 4, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", None])
    graph = helper.make_graph(nodes, "g", [image], [scores], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    model = ox.load(proto)
    assert {node.op_type for node in model.ir.graph} & {"SplitToSequence", "SequenceAt"} == set()
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    c = np.einsum("oi,nihw->nohw", numpy_helper.to_array(inits[0])[:, :, 0, 0], x).mean((2, 3))
    first, last = (c[:, :2], c[:, 4:]) if split.ndim == 0 else (c[:, :3], c[:, 3:])
    np.testing.assert_allclose(model.predict(x), np.concatenate([first, last], 1), atol=1e-5)
    assert model.backend("torch").predict(x).shape == (2, first.shape[1] + last.shape[1])


def test_a_sequence_that_stays_keeps_its_type_and_runs():
    """A SplitToSequence read whole (ConcatFromSequence) stays a sequence; shape inference
    typed it as a tensor, which ONNX Runtime refused to load."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("SplitToSequence", ["input", "split"], ["seq"], axis=1),
             helper.make_node("ConcatFromSequence", ["seq"], ["joined"], axis=1),
             helper.make_node("ReduceMean", ["joined"], ["scores"], axes=[2, 3], keepdims=0)]
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 4, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3])
    split = numpy_helper.from_array(np.array([1, 2], np.int64), "split")
    proto = helper.make_model(helper.make_graph(nodes, "g", [image], [scores], initializer=[split]),
                              opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ox.load(proto).predict(x), x.mean((2, 3)), atol=1e-6)
