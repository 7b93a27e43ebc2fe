"""The example model shipped in the package: small, documented, and accurate."""

import json
from pathlib import Path

import onnx
import pytest

import onnxplain as ox
from onnxplain.data import path as data_path
from onnxplain.data import shapes

# Not one of the seeds that made the training, validation or test sets (1, 2, 3).
FRESH_SEED = 2024


@pytest.fixture(scope="module")
def model():
    return ox.examples.shapes_model()


@pytest.fixture(scope="module")
def card():
    return ox.examples.shapes_info()


def test_bundled_files_exist_and_the_model_is_well_under_a_megabyte():
    onnx_path = Path(ox.examples.shapes_model_path())
    assert onnx_path.is_file() and data_path("shapes_cnn.json").is_file()
    assert onnx_path.stat().st_size < 300_000


def test_card_records_classes_seeds_preprocessing_and_accuracy(card):
    assert card["classes"] == list(shapes.CLASSES)
    gen = card["generator"]
    assert len({gen["train_seed"], gen["val_seed"], gen["test_seed"], FRESH_SEED}) == 4
    assert card["accuracy"]["test"] >= 0.95
    assert 20_000 <= card["parameters"] <= 40_000
    from onnxplain.preprocess import Preprocess

    spec = Preprocess.parse(card["preprocess"])
    assert spec.size == (64, 64) and spec.layout == "NCHW"
    json.dumps(card)


def test_graph_keeps_batchnorm_has_a_squeeze_excitation_gate_and_a_gap_fc_head(model):
    ops = [n.op_type for n in model.proto().graph.node]
    assert ops.count("BatchNormalization") == 4
    assert "Sigmoid" in ops and "Mul" in ops
    head = model.classifier_head()
    assert head is not None and head.weight.shape == (5, 48)
    assert model.find_layer("auto").shape[1:] == (48, 16, 16)
    assert model.input_spec.shape[1:] == (3, 64, 64) and model.fixed_batch is None


def test_class_names_are_stored_in_the_onnx_file_too():
    proto = onnx.load(ox.examples.shapes_model_path())
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["classes"].split(",") == ox.examples.shapes_info()["classes"]


def test_accuracy_on_freshly_generated_images_is_at_least_95_percent(model):
    images, labels, _ = ox.examples.shapes_dataset(500, seed=FRESH_SEED)
    accuracy = float((model.predict(images, batch_size=250).argmax(1) == labels).mean())
    assert accuracy >= 0.95, accuracy
