"""Custom operator domains and custom-op libraries: refused by default, allowed only by an
explicit opt-in to ``ox.load``, and then run on ONNX Runtime only."""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper

import onnxplain as ox

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _ms_gelu() -> onnx.ModelProto:
    """tiny_cnn with its first Relu replaced by the contrib op com.microsoft::Gelu."""
    proto = ox.examples.tiny_cnn()
    node = proto.graph.node[1]
    node.op_type, node.domain = "Gelu", "com.microsoft"
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return proto


def _standard_gelu() -> onnx.ModelProto:
    """The same network with the standard Gelu of opset 20 (the reference)."""
    proto = ox.examples.tiny_cnn(opset=20)
    proto.graph.node[1].op_type = "Gelu"
    return proto


def _ms_fused_conv() -> onnx.ModelProto:
    """tiny_cnn with Conv + Relu fused into com.microsoft::FusedConv(activation="Relu")."""
    proto = ox.examples.tiny_cnn()
    conv, _ = proto.graph.node[0], proto.graph.node[1]
    fused = helper.make_node(
        "FusedConv",
        list(conv.input),
        ["relu1"],
        name="fused1",
        domain="com.microsoft",
        activation="Relu",
        pads=[1, 1, 1, 1],
    )
    nodes = [fused, *proto.graph.node[2:]]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return proto


def test_custom_domain_is_refused_by_default_and_the_error_says_how_to_allow_it():
    with pytest.raises(ox.ModelLoadError, match=r"custom domains \['com.microsoft'\].*allowed_domains="):
        ox.load(_ms_gelu())


def test_allowing_one_domain_does_not_allow_another():
    proto = _ms_gelu()
    proto.graph.node[3].domain = "com.evil"
    proto.opset_import.append(helper.make_opsetid("com.evil", 1))
    with pytest.raises(ox.ModelLoadError, match=r"\['com.evil'\]"):
        ox.load(proto, allowed_domains=["com.microsoft"])


@pytest.mark.parametrize("bad", [[""], ["ai.onnx"], [3], [None], 3])
def test_allowed_domains_takes_custom_domain_names(bad):
    with pytest.raises(ox.InputValidationError, match="allowed_domains"):
        ox.load(_ms_gelu(), allowed_domains=bad)


def test_allowed_contrib_gelu_runs_on_onnxruntime_like_the_standard_gelu():
    model = ox.load(_ms_gelu(), allowed_domains=["com.microsoft"])
    ref = ox.load(_standard_gelu())
    # same weights, Gelu by ORT's contrib kernel vs the opset-20 Gelu: float32 agreement
    np.testing.assert_allclose(model.predict(X), ref.predict(X), rtol=1e-5, atol=1e-5)
    occ = ox.Occlusion(model, backend="onnxruntime").attribute(
        X, target=1, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2), show_progress=False
    )
    ref_occ = ox.Occlusion(ref, backend="onnxruntime").attribute(
        X, target=1, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2), show_progress=False
    )
    assert occ.shape == X.shape and np.abs(occ).max() > 0
    np.testing.assert_allclose(occ, ref_occ, rtol=1e-4, atol=1e-5)


def test_allowed_fused_conv_runs_on_onnxruntime_like_conv_and_relu():
    model = ox.load(_ms_fused_conv(), allowed_domains="com.microsoft")
    ref = ox.load(ox.examples.tiny_cnn())
    np.testing.assert_allclose(model.predict(X), ref.predict(X), rtol=1e-5, atol=1e-5)


def test_gradient_methods_on_a_contrib_op_raise_unsupported_operator_naming_it():
    model = ox.load(_ms_gelu(), allowed_domains=["com.microsoft"])
    with pytest.raises(ox.UnsupportedOperatorError, match="Gelu") as info:
        ox.Saliency(model).attribute(X, target=0)
    # a custom-domain operator is named with its domain; default-domain ones stay "Op-since"
    assert info.value.operators == ["com.microsoft::Gelu-1"]
    # the failed torch build leaves the model usable on ONNX Runtime
    assert np.isfinite(ox.RISE(model).attribute(X, target=0, n_masks=8, s=2, show_progress=False)).all()


def test_a_custom_op_library_that_does_not_exist_is_our_error(tmp_path):
    with pytest.raises(ox.ModelLoadError, match="custom_op_libraries"):
        ox.load(_ms_gelu(), allowed_domains=["com.microsoft"], custom_op_libraries=[tmp_path / "nope.so"])
    with pytest.raises(ox.ModelLoadError, match="custom_op_libraries"):
        ox.load(_ms_gelu(), allowed_domains=["com.microsoft"], custom_op_libraries=[tmp_path])  # a folder
    with pytest.raises(ox.InputValidationError, match="custom_op_libraries"):
        ox.load(_ms_gelu(), allowed_domains=["com.microsoft"], custom_op_libraries=[42])


@pytest.fixture
def registered(monkeypatch):
    """The libraries ONNX Runtime is asked to register, across all sessions built."""
    calls: list[str] = []

    class SpyOptions(onnxruntime.SessionOptions):
        def register_custom_ops_library(self, path):
            calls.append(path)
            return super().register_custom_ops_library(path)

    monkeypatch.setattr(onnxruntime, "SessionOptions", SpyOptions)
    return calls


def test_no_library_is_registered_unless_named(registered):
    model = ox.load(_ms_gelu(), allowed_domains=["com.microsoft"])
    model.predict(X)
    ox.LayerActivation(model, "features").attribute(X)  # a second session, with an extra output
    assert model.custom_op_libraries == () and registered == []


def test_a_named_library_is_registered_and_a_bad_one_is_our_error(tmp_path, registered):
    fake = tmp_path / "libfake_ops.so"
    fake.write_text("not a shared library")
    model = ox.load(_ms_gelu(), allowed_domains=["com.microsoft"], custom_op_libraries=[fake])
    assert model.custom_op_libraries == (str(fake.resolve()),)
    assert model.tail("conv1").custom_op_libraries == model.custom_op_libraries
    with pytest.raises(ox.ModelLoadError, match="custom-op library"):
        model.predict(X)
    assert registered == [str(fake.resolve())]


def test_none_means_no_opt_in():
    with pytest.raises(ox.ModelLoadError, match="allowed_domains"):
        ox.load(_ms_gelu(), allowed_domains=None, custom_op_libraries=None)
    assert (
        ox.load(ox.examples.tiny_cnn(), allowed_domains=None, custom_op_libraries=None).custom_op_libraries
        == ()
    )
