"""``onnxplain.load``: read an ONNX model safely, validate it and canonicalise its graph."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxplain.core.canonical import canonicalize
from onnxplain.core.errors import ModelLoadError
from onnxplain.core.model import Model

logger = logging.getLogger(__name__)

#: The oldest default-domain opset accepted (older graphs use long-gone operator versions).
MIN_OPSET = 7
#: Graphs older than this are upgraded to ``UPGRADE_TO`` on load (e.g. Upsample → Resize),
#: so that every backend sees the operator versions it knows.
UPGRADE_BELOW = 11
UPGRADE_TO = 13
_KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


#: Default limits (bytes) for :func:`load`; both can be raised per call.
MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's own ceiling
MAX_EXTERNAL_BYTES = 16 * 1024**3


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL]


def _check_external_data(proto: onnx.ModelProto, folder: Path, limit: int) -> None:
    """Every external-data file must lie inside ``folder`` (no absolute paths, no ``..``,
    no symlink or hard link leading out) and their sizes must stay under ``limit``."""
    root = folder.resolve()
    total = 0
    for tensor in _external_tensors(proto):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        rel = Path(location)
        if not location or rel.is_absolute() or ".." in rel.parts or location.startswith(("/", "\\")):
            raise ModelLoadError(
                f"tensor {tensor.name!r} points at external data {location!r} outside the model's "
                "folder; external data must be a relative path inside that folder"
            )
        target = (folder / rel)
        resolved = target.resolve()
        if not resolved.is_relative_to(root):
            raise ModelLoadError(
                f"external data {location!r} of tensor {tensor.name!r} resolves to {resolved}, "
                "outside the model's folder (a symlink?); refusing to read it"
            )
        if not resolved.is_file():
            raise ModelLoadError(
                f"missing external data file {location!r} for tensor {tensor.name!r}; copy it "
                "next to the model"
            )
        stat = resolved.stat()
        if stat.st_nlink > 1:
            raise ModelLoadError(
                f"external data {location!r} is a hard link; refusing it (it may expose a file "
                "from outside the model's folder). Copy the data instead"
            )
        offset = int(info.get("offset", 0) or 0)
        length = int(info.get("length", stat.st_size - offset) or 0)
        if offset < 0 or length < 0 or offset + length > stat.st_size:
            raise ModelLoadError(
                f"external data of tensor {tensor.name!r} asks for bytes {offset}..{offset + length} "
                f"of {location!r}, which has {stat.st_size}"
            )
        total += length
        if total > limit:
            raise ModelLoadError(
                f"the model's external data exceeds max_external_bytes={limit}; raise the limit "
                "if you trust this model"
            )


def _read(
    source: str | os.PathLike | bytes | onnx.ModelProto, max_model_bytes: int, max_external_bytes: int
) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        if _external_tensors(proto):
            raise ModelLoadError(
                "this ModelProto references external data that is not loaded; "
                "load the model from its file path instead"
            )
        return proto, "<ModelProto>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > max_model_bytes:
            raise ModelLoadError(f"the model is {len(source)} bytes, over max_model_bytes={max_model_bytes}")
        try:
            proto = onnx.load_from_string(bytes(source))
        except Exception as exc:
            raise ModelLoadError(f"these bytes are not an ONNX model: {exc}") from None
        if _external_tensors(proto):
            raise ModelLoadError(
                "the model references external data files; load it from its file path"
            )
        return proto, "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"no model file at {str(path)!r}")
        path = path.resolve()
        size = path.stat().st_size
        if size > max_model_bytes:
            raise ModelLoadError(
                f"{path} is {size} bytes, over max_model_bytes={max_model_bytes}; raise the limit "
                "if you trust this model"
            )
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ModelLoadError(f"{path} is not an ONNX model file: {exc}") from None
        if _external_tensors(proto):
            _check_external_data(proto, path.parent, max_external_bytes)
            try:
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(proto, str(path.parent))
            except Exception as exc:
                raise ModelLoadError(f"cannot read the external data of {path}: {exc}") from None
        return proto, str(path)
    raise ModelLoadError(
        f"load() takes a file path, bytes or an onnx.ModelProto, got {type(source).__name__}"
    )


def _validate(proto: onnx.ModelProto) -> None:
    if not proto.graph.node:
        raise ModelLoadError("the model's graph has no nodes (is this an ONNX model file?)")
    if proto.ir_version < 3 or proto.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(
            f"unsupported ONNX IR version {proto.ir_version}; this onnx supports 3.."
            f"{onnx.IR_VERSION} (upgrade the onnx package or re-export the model)"
        )
    opsets = {o.domain: o.version for o in proto.opset_import}
    default = opsets.get("", opsets.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if default is None or not MIN_OPSET <= default <= newest:
        raise ModelLoadError(
            f"unsupported opset {default}: onnxplain reads opsets {MIN_OPSET}..{newest}; "
            "re-export with a supported opset or convert with onnx.version_converter"
        )
    local = {(f.domain, f.name) for f in proto.functions}
    unknown = sorted(
        {n.domain for n in proto.graph.node if n.domain not in _KNOWN_DOMAINS
         and (n.domain, n.op_type) not in local}
    )
    if unknown:
        raise ModelLoadError(
            f"the model uses operators from custom domains {unknown}, which onnxplain does not "
            "run; export with standard ONNX operators only"
        )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        raise ModelLoadError(f"the model is not valid ONNX: {str(exc).splitlines()[0]}") from None


def _upgrade_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx", UPGRADE_BELOW)) >= UPGRADE_BELOW:
        return proto
    try:
        upgraded = onnx.version_converter.convert_version(proto, UPGRADE_TO)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # keep the original: ONNX Runtime still runs it
        logger.warning("could not upgrade opset %s to %s: %s", opsets, UPGRADE_TO, exc)
        return proto
    return upgraded


def _drop_zipmap(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each ``ZipMap`` that makes a graph output by ``Identity`` (in place: ``proto``
    is load's own copy).

    skl2onnx ends classifiers with ZipMap, which turns the (N, classes) probabilities into
    a sequence of maps: a type onnx-ir cannot hold and no method can explain. The output
    keeps its name and becomes the probability tensor.
    """
    outputs = {o.name: i for i, o in enumerate(proto.graph.output)}
    for node in proto.graph.node:
        if node.op_type == "ZipMap" and node.domain == "ai.onnx.ml" and node.output[0] in outputs:
            labels = [a for a in node.attribute if a.name.startswith("classlabels")]
            classes = len(onnx.helper.get_attribute_value(labels[0])) if labels else None
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
            probabilities = onnx.helper.make_tensor_value_info(
                node.output[0], onnx.TensorProto.FLOAT, [None, classes])
            proto.graph.output[outputs[node.output[0]]].CopyFrom(probabilities)
    return proto


def load(
    source: str | os.PathLike | bytes | onnx.ModelProto,
    *,
    max_model_bytes: int = MAX_MODEL_BYTES,
    max_external_bytes: int = MAX_EXTERNAL_BYTES,
) -> Model:
    """Load an ONNX model from a file path, bytes or an ``onnx.ModelProto``.

    Safe for files from elsewhere: sizes are capped (``max_model_bytes``,
    ``max_external_bytes``), external data must lie inside the model's folder (no
    absolute paths, ``..``, symlinks or hard links out), the model is checked with
    ``onnx.checker`` (full check), operators from custom domains are refused and no
    custom-op library is ever loaded. The graph is then canonicalised (see
    :mod:`onnxplain.core.canonical`); the source is never modified.

    >>> import onnxplain as ox
    >>> model = ox.load(ox.examples.tiny_cnn())
    >>> model.input_name, model.outputs[0].shape
    ('input', ('batch', 3))
    """
    proto, where = _read(source, max_model_bytes, max_external_bytes)
    _validate(proto)
    proto = _drop_zipmap(_upgrade_opset(proto))
    try:
        ir_model = ir.from_proto(proto)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the graph of {where}: {exc}") from None
    return Model(canonicalize(ir_model), source=where)
