"""A corpus of malformed and hostile ONNX files: each ends in our own error within a
second, and nothing outside the model's folder is opened.

Opened files are watched with a Python audit hook (PEP 578): it sees every ``open``
made through Python (``open``, ``io.open``, ``os.open``, ``os.fdopen`` of a descriptor
opened in C++, resolved through ``/proc/self/fd``), whichever module makes it. Reads of
library code (``.py``/``.pyc``/``.so`` under the interpreter's prefix) are not data and
are ignored; everything else must lie in the test's folder.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxplain as ox


def _tiny() -> onnx.ModelProto:
    return ox.examples.tiny_cnn()


def _with_external(folder: Path, location: str) -> Path:
    """Save the tiny model with its weights external, then point them at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(_tiny(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    proto = onnx.load(path, load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, path)
    return path


def _mutated(mutate) -> bytes:
    proto = _tiny()
    mutate(proto)
    return proto.SerializeToString()


def _cycle(p):
    p.graph.node[0].input[0] = "features"


def _unknown_op(p):
    p.graph.node[1].op_type = "NoSuchOp"


def _missing_initializer(p):
    del p.graph.initializer[0]


def _dataless_huge_tensor(p):
    p.graph.initializer.append(TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[10**12]))


def _custom_domain(p):
    p.graph.node[1].domain = "com.evil"
    p.opset_import.append(helper.make_opsetid("com.evil", 1))


def _old_opset(p):
    p.opset_import[0].version = 3


def _future_ir(p):
    p.ir_version = 99


def _no_nodes(p):
    del p.graph.node[:]


def _int_input(p):
    p.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64


BYTES_CASES = {
    "empty": b"",
    "text": b"this is a text file, not a model\n" * 20,
    "png magic": b"\x89PNG\r\n\x1a\n" + os.urandom(200),
    "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "truncated": _tiny().SerializeToString()[:150],
    "cycle": _mutated(_cycle),
    "unknown op": _mutated(_unknown_op),
    "missing initializer": _mutated(_missing_initializer),
    "huge declared tensor without data": _mutated(_dataless_huge_tensor),
    "custom domain": _mutated(_custom_domain),
    "old opset": _mutated(_old_opset),
    "future IR version": _mutated(_future_ir),
    "no nodes": _mutated(_no_nodes),
    "integer input": _mutated(_int_input),
}


_WATCH: list[list[str]] = []  # the lists of the active `opened` fixtures
_CODE_ROOTS = tuple(Path(p).resolve() for p in {sys.prefix, sys.base_prefix, Path(ox.__file__).parent})


def _audit(event, args):
    if not _WATCH or event != "open" or not args:
        return
    target = args[0]
    if isinstance(target, int):  # a descriptor: where it really points
        try:
            target = os.readlink(f"/proc/self/fd/{target}")
        except OSError:
            return
    for seen in _WATCH:
        seen.append(os.path.abspath(os.fsdecode(target)))


sys.addaudithook(_audit)  # cannot be removed; inert while no test watches


def _is_code(path: Path) -> bool:
    return path.suffix in {".py", ".pyc", ".so", ".pth"} and any(path.is_relative_to(r) for r in _CODE_ROOTS)


def _outside(opened: list[str], folder: Path) -> list[Path]:
    """The opened files that are neither in ``folder`` nor library code."""
    paths = [Path(p).resolve() for p in opened]
    return [p for p in paths if not p.is_relative_to(folder.resolve()) and not _is_code(p)]


@pytest.fixture
def opened():
    """Absolute paths of every file opened (through Python) during the test."""
    ox.load(ox.examples.tiny_cnn())  # import what load needs before watching
    seen: list[str] = []
    _WATCH.append(seen)
    yield seen
    _WATCH.remove(seen)


@pytest.mark.parametrize("case", sorted(BYTES_CASES))
def test_malformed_model_files_end_in_our_error_quickly(tmp_path, case, opened):
    path = tmp_path / "model.onnx"
    path.write_bytes(BYTES_CASES[case])
    start = time.perf_counter()
    with pytest.raises(ox.ModelLoadError):
        ox.load(path)
    with pytest.raises(ox.ModelLoadError):
        ox.load(path.read_bytes())
    assert time.perf_counter() - start < 1.0
    assert str(path) in opened  # the watch sees load's reads
    assert _outside(opened, tmp_path) == []


@pytest.mark.parametrize("location", ["../outside/secret.bin", "/etc/passwd", "sub/../../outside/secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location, opened):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.bin").write_bytes(b"\0" * 4096)
    path = _with_external(tmp_path / "model", location)
    opened.clear()
    start = time.perf_counter()
    with pytest.raises(ox.ModelLoadError, match="outside|relative path"):
        ox.load(path)
    assert time.perf_counter() - start < 1.0
    assert _outside(opened, tmp_path / "model") == []
    assert not any("secret" in p or p == "/etc/passwd" for p in opened)


def test_symlink_out_of_the_folder_is_refused(tmp_path, opened):
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.bin"
    path = _with_external(tmp_path / "model", "weights.bin")
    secret.write_bytes((tmp_path / "model" / "weights.bin").read_bytes())
    (tmp_path / "model" / "weights.bin").unlink()
    (tmp_path / "model" / "weights.bin").symlink_to(secret)
    opened.clear()
    start = time.perf_counter()
    with pytest.raises(ox.ModelLoadError, match="symlink|outside"):
        ox.load(path)
    assert time.perf_counter() - start < 1.0
    assert _outside(opened, tmp_path / "model") == []
    assert str(secret.resolve()) not in opened


def test_hard_link_is_refused(tmp_path, opened):
    path = _with_external(tmp_path / "model", "weights.bin")
    os.link(tmp_path / "model" / "weights.bin", tmp_path / "model" / "alias.bin")
    opened.clear()
    start = time.perf_counter()
    with pytest.raises(ox.ModelLoadError, match="hard link"):
        ox.load(path)
    assert time.perf_counter() - start < 1.0
    assert not any(p.endswith(".bin") for p in opened)  # refused before reading the data


def test_a_valid_model_with_external_data_reads_only_its_folder(tmp_path, opened):
    path = _with_external(tmp_path / "model", "weights.bin")
    opened.clear()
    assert ox.load(path).num_classes == 3
    assert str(tmp_path / "model" / "weights.bin") in opened  # the watch sees the data read
    assert _outside(opened, tmp_path / "model") == []


def test_external_data_past_the_end_of_its_file_is_refused(tmp_path, opened):
    path = _with_external(tmp_path / "model", "weights.bin")
    data = tmp_path / "model" / "weights.bin"
    data.write_bytes(data.read_bytes()[:10])
    opened.clear()
    start = time.perf_counter()
    with pytest.raises(ox.ModelLoadError, match="asks for bytes"):
        ox.load(path)
    assert time.perf_counter() - start < 1.0
    assert _outside(opened, tmp_path / "model") == []


def test_size_limits_are_enforced(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_tiny(), path)
    with pytest.raises(ox.ModelLoadError, match="max_model_bytes"):
        ox.load(path, max_model_bytes=100)
    ext = _with_external(tmp_path / "ext", "weights.bin")
    with pytest.raises(ox.ModelLoadError, match="max_external_bytes"):
        ox.load(ext, max_external_bytes=100)
    assert ox.load(ext).num_classes == 3


def test_huge_declared_input_dims_load_but_inputs_are_checked():
    proto = _tiny()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = 10**9
    dims[3].dim_value = 10**9
    model = ox.load(proto)
    with pytest.raises(ox.InputValidationError, match="axis 2"):
        model.predict(np.zeros((1, 3, 8, 8), np.float32))


def test_the_watch_sees_every_kind_of_open_outside_the_folder(tmp_path, opened):
    data = Path(ox.__file__).parent / "data" / "shapes_cnn.json"  # not code: must be reported
    data.read_bytes()
    os.close(os.open(data, os.O_RDONLY))
    fd = os.open(data, os.O_RDONLY)
    with os.fdopen(fd, "rb"):
        pass
    # read_bytes, os.open, and os.open + fdopen (two events)
    assert opened.count(str(data.resolve())) == 4
    assert set(_outside(opened, tmp_path)) == {data.resolve()}
