"""ONNX Runtime's fused operators (a model saved after its extended optimisation, or by
``onnxruntime.transformers.optimizer``) load as the standard operators they fuse: the same
outputs on both backends, and gradient, CAM and LRP methods run where they were refused."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import max_rel_err, small_cnn
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox

RNG = np.random.default_rng(0)
MS = ["com.microsoft"]


def _ops(model: ox.Model) -> set[tuple[str, str]]:
    return {(node.domain, node.op_type) for node in model.ir.graph}


@pytest.fixture(scope="module")
def cnn_pair(tmp_path_factory, images):
    """(the torch CNN, its export, the export as ONNX Runtime's extended optimisation saves it)."""
    net = small_cnn(seed=3)
    model = ox.adapters.torch.export(net, torch.from_numpy(images))
    folder = tmp_path_factory.mktemp("fused")
    model.save(folder / "plain.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "fused.onnx")
    ort.InferenceSession(str(folder / "plain.onnx"), options, providers=["CPUExecutionProvider"])
    assert "FusedConv" in {n.op_type for n in onnx.load(folder / "fused.onnx").graph.node}
    return net, model, ox.load(folder / "fused.onnx", allowed_domains=MS)


def test_a_model_saved_by_onnx_runtimes_extended_optimisation_is_explained_like_its_source(cnn_pair, images):
    from captum.attr import Saliency

    net, plain, fused = cnn_pair
    assert not {d for d, _ in _ops(fused)} - {""}  # FusedConv written out: Conv, Relu
    np.testing.assert_allclose(fused.predict(images), plain.predict(images), rtol=1e-5, atol=1e-6)
    ref = Saliency(net).attribute(torch.from_numpy(images).requires_grad_(True), target=1, abs=False).numpy()
    assert max_rel_err(ox.Saliency(fused).attribute(images, target=1, abs=False), ref) < 1e-5
    for method in (ox.LRP, ox.GuidedBackprop, ox.CAM):
        ours, source = (method(m).attribute(images, target=1) for m in (fused, plain))
        assert max_rel_err(ours, source) < 1e-5


def _fused_graph(opset: int = 17) -> onnx.ModelProto:
    """Every fused operator written out, in one graph of (N, 3, 4, 4) → (N, 5)."""
    f32 = lambda *shape: numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.5)  # noqa: E731
    inits = {"w1": f32(6, 3, 3, 3), "b1": f32(6), "w2": f32(6, 6, 1, 1), "w3": f32(6, 6, 1, 1),
             "w4": f32(6, 6, 1, 1), "d1": f32(96, 16), "c1": f32(16), "d2": f32(16, 16), "gamma": f32(16),
             "beta": f32(16), "bias": f32(16), "c2": f32(16), "g": f32(5, 16), "gb": f32(5)}
    for name, init in inits.items():
        init.name = name
    ms = "com.microsoft"
    nodes = [
        helper.make_node("FusedConv", ["input", "w1", "b1"], ["c1o"], domain=ms, pads=[1, 1, 1, 1],
                         activation="Relu"),
        helper.make_node("FusedConv", ["c1o", "w2", "", "c1o"], ["c2o"], domain=ms, activation="Clip",
                         activation_params=[0.0, 6.0]),
        helper.make_node("FusedConv", ["c2o", "w3"], ["c3o"], domain=ms, activation="LeakyRelu",
                         activation_params=[0.1]),
        helper.make_node("FusedConv", ["c3o", "w4"], ["c4o"], domain=ms, activation="HardSigmoid",
                         activation_params=[0.3, 0.4]),
        helper.make_node("Flatten", ["c4o"], ["flat"]),
        helper.make_node("MatMul", ["flat", "d1"], ["m1"]),
        helper.make_node("BiasGelu", ["m1", "c1"], ["h1"], domain=ms),
        helper.make_node("MatMul", ["h1", "d2"], ["m2"]),
        helper.make_node("SkipLayerNormalization", ["m2", "h1", "gamma", "beta", "bias"],
                         ["ln", "", "", "sum"], domain=ms, epsilon=1e-5),
        helper.make_node("FastGelu", ["ln", "c2"], ["h2"], domain=ms),
        helper.make_node("QuickGelu", ["h2"], ["h3"], domain=ms, alpha=1.5),
        helper.make_node("Add", ["h3", "sum"], ["h4"]),  # the SkipLayerNormalization's sum output
        helper.make_node("FusedGemm", ["h4", "g", "gb"], ["output"], domain=ms, transB=1,
                         activation="LeakyRelu", activation_alpha=0.2),
    ]
    graph = helper.make_graph(
        nodes, "fused", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5])], list(inits.values()))
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", opset),
                                                                  helper.make_opsetid(ms, 1)])


def test_each_fused_operator_written_out_computes_what_onnx_runtime_computes():
    proto = _fused_graph()
    x = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    model = ox.load(proto, allowed_domains=MS)
    assert not {d for d, _ in _ops(model)} - {""}
    for backend in ("onnxruntime", "torch"):
        got = model.backend(backend).forward(x)[model.output_name]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=backend)
    sal = ox.Saliency(model).attribute(x, target=1)
    assert np.isfinite(sal).all() and sal.any()


def test_a_skip_layer_norm_before_opset_17_stays_fused():
    """No LayerNormalization before opset 17: the node is left to ONNX Runtime (forward-only)."""
    model = ox.load(_fused_graph(opset=16), allowed_domains=MS)
    assert ("com.microsoft", "SkipLayerNormalization") in _ops(model)
    assert ("com.microsoft", "FusedConv") not in _ops(model)
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert ox.Occlusion(model).attribute(x, target=0, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2),
                                         show_progress=False).shape == x.shape
