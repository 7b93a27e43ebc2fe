"""Loading: sources, validation errors, and the canonicalisation passes."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox


def test_loads_from_path_bytes_and_proto(tmp_path):
    proto = ox.examples.tiny_cnn()
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, path)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    outs = [ox.load(src).predict(x) for src in (str(path), path, path.read_bytes(), proto)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def test_loading_never_modifies_the_source(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(ox.examples.tiny_cnn(), path)
    before = path.read_bytes()
    ox.load(path).backend("torch")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_not_an_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(ox.ModelLoadError, match="not an ONNX model"):
        ox.load(bad)
    with pytest.raises(ox.ModelLoadError, match="no model file"):
        ox.load(tmp_path / "missing.onnx")
    with pytest.raises(ox.ModelLoadError, match="file path, bytes"):
        ox.load(42)


def test_missing_external_data_is_reported(tmp_path):
    proto = ox.examples.tiny_cnn()
    path = tmp_path / "ext.onnx"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert ox.load(path).num_classes == 3  # complete: loads
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ox.ModelLoadError, match="external data|cannot"):
        ox.load(path)
    with pytest.raises(ox.ModelLoadError, match="external data"):
        ox.load(onnx.load(path, load_external_data=False))


def test_unsupported_opset_is_refused():
    proto = ox.examples.tiny_cnn()
    proto.opset_import[0].version = 5
    with pytest.raises(ox.ModelLoadError, match="opset 5"):
        ox.load(proto)


@pytest.mark.parametrize("options", [{"max_model_bytes": "x"}, {"max_external_bytes": 0},
                                     {"fixed_inputs": -1}, {"fixed_inputs": ["mask"]}])
def test_load_options_of_the_wrong_kind_are_refused_in_our_words(options):
    with pytest.raises(ox.InputValidationError, match=next(iter(options))):
        ox.load(ox.examples.tiny_cnn(), **options)


def test_model_without_float_input_is_refused():
    node = helper.make_node("Cast", ["ids"], ["out"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(ox.ModelLoadError, match="floating-point input"):
        ox.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_custom_domains_are_refused():
    proto = ox.examples.tiny_cnn()
    proto.graph.node[1].domain = "com.vendor"
    proto.opset_import.append(helper.make_opsetid("com.vendor", 1))
    with pytest.raises(ox.ModelLoadError, match="com.vendor"):
        ox.load(proto)


def _legacy_style_export() -> onnx.ModelProto:
    """Weights behind Identity, a shape behind Constant, Reshape(allowzero=1), a dead node."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w_shared")
    fc = numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc")
    shape = helper.make_tensor("shape_value", TensorProto.INT64, [2], [-1, 4])
    nodes = [
        helper.make_node("Identity", ["w_shared"], ["w"], name="id"),
        helper.make_node("Constant", [], ["shape"], name="const", value=shape),
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["f"], name="reshape", allowzero=1),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["r"], ["unused"], name="dead"),
    ]
    graph = helper.make_graph(nodes, "legacy", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], initializer=[w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return model


def test_canonicalisation_makes_exports_convertible():
    model = ox.load(_legacy_style_export())
    ops = [n.op_type for n in model.ir.graph]
    assert ops == ["Conv", "Relu", "GlobalAveragePool", "Reshape", "Gemm"]
    reshape = next(n for n in model.ir.graph if n.op_type == "Reshape")
    assert "allowzero" not in reshape.attributes
    assert {"w_shared", "shape"} <= set(model.ir.graph.initializers)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.backend("torch").predict(x), model.predict(x), atol=1e-5)


def test_a_pass_that_fails_midway_leaves_no_half_made_edit(monkeypatch, caplog):
    # a canonicalisation pass that edits the graph and then raises must be left out whole:
    # the model is read again and the other passes run without it
    from onnx_ir.passes import InPlacePass, PassResult

    from onnxplain.core import canonical

    class EditsThenFails(InPlacePass):
        def call(self, model):
            for node in model.graph:
                if node.op_type == "Relu":
                    node.op_type = "Sigmoid"  # would change the function the model computes
            raise RuntimeError("gave up halfway")

    steps = canonical._steps
    ran = []

    class Records(InPlacePass):
        def call(self, model):
            ran.append(True)
            return PassResult(model, modified=False)

    monkeypatch.setattr(canonical, "_steps",
                        lambda: [*steps()[:3], EditsThenFails(), *steps()[3:], Records()])
    proto = ox.examples.tiny_cnn()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with caplog.at_level("WARNING", logger="onnxplain.core.canonical"):
        model = ox.load(proto)
    assert "EditsThenFails skipped: gave up halfway" in caplog.text
    assert "Relu" in [node.op_type for node in model.ir.graph]
    assert len(ran) == 1  # the passes after the failing one ran, on the graph read again
    import onnxruntime as ort

    reference = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(model.predict(x), reference, rtol=1e-6, atol=1e-7)


def test_graph_queries(small_model):
    assert small_model.input_spec.shape[1:] == (3, 32, 32)
    assert small_model.num_classes == 5
    layers = small_model.layers()
    assert [s.op_type for s in layers][:2] == ["Conv", "Relu"]
    assert all(len(s.shape) == 4 for s in layers)
    auto = small_model.find_layer("auto")
    assert auto.op_type == "Relu" and auto.shape[1:] == (16, 16, 16)
    assert small_model.find_layer(auto.node) == auto


def test_input_validation_messages(small_model):
    good = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(ox.InputValidationError, match="axis 2"):
        small_model.predict(np.zeros((1, 3, 16, 32), np.float32))
    with pytest.raises(ox.InputValidationError, match="rank"):
        small_model.predict(good[0])
    with pytest.raises(ox.InputValidationError, match="floating-point"):
        small_model.predict(good.astype(np.int64))
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ox.InputValidationError, match="NaN"):
        small_model.predict(bad)
    with pytest.raises(ox.InputValidationError, match="numpy array"):
        small_model.predict([[1.0]])
    with pytest.warns(UserWarning, match="float64"):
        assert small_model.predict(good.astype(np.float64)).dtype == np.float32
    assert small_model.predict(good.astype(np.float16)).dtype == np.float32  # lossless: silent


def test_old_opsets_are_upgraded_so_the_torch_backend_converts_them():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Upsample", ["c", "scales"], ["u"], name="up", mode="nearest"),
        helper.make_node("GlobalAveragePool", ["u"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "opset9",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc"),
            numpy_helper.from_array(np.zeros(2, np.float32), "fc_b"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    proto.ir_version = 4
    model = ox.load(proto)
    assert model.opset == 13 and "Resize" in [n.op_type for n in model.ir.graph]
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.backend("torch").predict(x), model.predict(x), atol=1e-5)


def test_output_names_the_output_methods_explain(tmp_path):
    """(features, logits): the first float output is explained by default; output="logits"
    explains the logits in every method (LRP's derived graph too, and after save), as the
    module returning only its logits does."""
    import torch
    from captum.attr import Saliency

    class TwoOutputs(torch.nn.Module):
        def __init__(self, both: bool = True) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc, self.both = torch.nn.Conv2d(3, 6, 3), torch.nn.Linear(6, 4), both

        def forward(self, x):
            h = torch.relu(self.conv(x)).mean((2, 3))
            return (h, self.fc(h)) if self.both else self.fc(h)

    paths = {}
    for both in (True, False):
        paths[both] = str(tmp_path / f"{both}.onnx")
        torch.onnx.export(TwoOutputs(both).eval(), (torch.rand(1, 3, 12, 12),), paths[both], dynamo=False,
                          input_names=["x"], output_names=["features", "logits"] if both else ["logits"],
                          dynamic_axes={"x": {0: "n"}})
    assert ox.load(paths[True]).output_name == "features"
    model, alone = ox.load(paths[True], output="logits"), ox.load(paths[False])
    assert model.output_name == "logits" and set(model.output_names) == {"logits", "features"}
    x = np.random.default_rng(0).random((2, 3, 12, 12), dtype=np.float32)
    ref = Saliency(TwoOutputs(False).eval()).attribute(torch.from_numpy(x), target=3, abs=False).numpy()
    ours = ox.Saliency(model).attribute(x, target=3, abs=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    for method in (ox.LRP, ox.GradCAM, ox.CAM):
        np.testing.assert_allclose(method(model).attribute(x, target=3), method(alone).attribute(x, target=3),
                                   rtol=1e-5, atol=1e-7, err_msg=method.__name__)
    assert ox.load(model.save(tmp_path / "saved.onnx")).output_name == "logits"
    with pytest.raises(ox.InputValidationError, match=r"one of the model's outputs \['features', 'logits'\]"):
        ox.load(paths[True], output="scores")


def test_an_integer_output_is_refused_as_the_explained_one():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["n"])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["score"]),
                               helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0)],
                              "g", [x], [label, score])
    proto = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    assert ox.load(proto).output_name == "score"
    with pytest.raises(ox.InputValidationError, match="'label' holds INT64, not floating-point scores"):
        ox.load(proto, output="label")


def test_a_file_exported_without_its_weights_says_so():
    """torch's export_params=False leaves the weights as graph inputs: the error names them
    and says what happened; a model whose second input is side information does not get
    that hint."""
    import io
    import warnings

    import torch
    from helpers import small_cnn

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_cnn(), (torch.randn(1, 3, 16, 16),), buffer, dynamo=False,
                          input_names=["x"], export_params=False)
    with pytest.raises(ox.ModelLoadError, match="'conv1.weight'.*export_params=False"):
        ox.load(buffer.getvalue())

    class WithSide(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, x, side):
            return self.net(x) + side

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithSide(), (torch.randn(1, 3, 16, 16), torch.randn(1, 5)), buffer, dynamo=False,
                          input_names=["x", "side"], dynamic_axes={"x": {0: "n"}, "side": {0: "n"}})
    with pytest.raises(ox.ModelLoadError, match="fixed_inputs") as caught:
        ox.load(buffer.getvalue())
    assert "export_params" not in str(caught.value)
