"""Model metadata: a Preprocess spec in metadata_props, and save() → load() round trips."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import small_cnn

import onnxplain as ox
from onnxplain.core.model import PREPROCESS_KEY

SPEC = ox.Preprocess(
    size=(32, 32), resize="center_crop", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


@pytest.fixture(scope="module")
def proto():
    model = ox.adapters.torch.export(small_cnn(), torch.randn(2, 3, 32, 32), exporter="legacy")
    return model.proto()


def _with_props(proto: onnx.ModelProto, **props: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for key, value in props.items():
        out.metadata_props.add(key=key.replace("_", "."), value=value)
    return out


def test_a_preprocess_spec_in_the_metadata_is_read(proto):
    model = ox.load(_with_props(proto, onnxplain_preprocess=SPEC.model_dump_json()))
    assert model.preprocess == SPEC
    assert model.metadata[PREPROCESS_KEY] == SPEC.model_dump_json()
    assert ox.load(proto).preprocess is None
    card = '{"name": "shapes", "preprocess": ' + SPEC.model_dump_json() + "}"  # the sidecar's format
    assert ox.load(_with_props(proto, onnxplain_preprocess=card)).preprocess == SPEC


def test_a_broken_spec_warns_and_is_ignored(proto):
    with pytest.warns(UserWarning, match="onnxplain.preprocess"):
        model = ox.load(_with_props(proto, onnxplain_preprocess='{"mean": [1, 2], "color": "L"}'))
    assert model.preprocess is None


def test_save_and_load_give_back_the_same_model(proto, tmp_path):
    model = ox.load(_with_props(proto, author="someone"))
    model.preprocess = SPEC.model_dump()  # dicts are validated into a Preprocess
    path = model.save(tmp_path / "model.onnx")
    again = ox.load(path)
    assert again.preprocess == SPEC and again.metadata["author"] == "someone"
    assert again.layout == model.layout and again.inputs == model.inputs and again.outputs == model.outputs
    assert [n.op_type for n in again.ir.graph] == [n.op_type for n in model.ir.graph]
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_an_nhwc_model_round_trips_without_a_second_transpose(tmp_path):
    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.permute(0, 3, 1, 2))

    model = ox.adapters.torch.export(ChannelsLast(), torch.randn(2, 32, 32, 3), exporter="legacy")
    assert model.layout == "NHWC"
    again = ox.load(model.save(tmp_path / "nhwc.onnx"))
    assert again.layout == "NHWC" and again.user_input_shape == model.user_input_shape
    # no transpose added (the saved pair, the layout's and the export's own, even cancels on reload)
    count = [n.op_type for n in again.ir.graph].count
    assert count("Transpose") <= [n.op_type for n in model.ir.graph].count("Transpose")
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    # the layout can still be overridden: the saved graph input is channels first
    assert ox.load(tmp_path / "nhwc.onnx", layout="NCHW").input_spec.shape[1:] == (3, 32, 32)
