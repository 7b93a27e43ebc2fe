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


@pytest.fixture(scope="module", params=["resnet18", "shufflenet_v2_x0_5"])
def pair(request):
    torch.manual_seed(0)
    net = getattr(torchvision.models, request.param)(num_classes=5).eval()
    x = torch.rand(2, 3, 64, 64)
    return net, x.numpy(), _export(net, x, optimize=True), _export(net, x, optimize=False)


def test_the_unoptimised_export_loads_without_what_onnx2torch_refuses(pair):
    _, x, _, raw = pair
    ops = {node.op_type for node in raw.ir.graph}
    assert not ops & {"CastLike", "SplitToSequence", "SequenceAt"}
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
