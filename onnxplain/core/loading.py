"""``onnxplain.load``: read an ONNX model safely, validate it and canonicalise its graph."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxplain.core.canonical import canonicalize
from onnxplain.core.errors import ModelLoadError
from onnxplain.core.model import Model

#: The oldest default-domain opset accepted (older graphs use long-gone operator versions).
MIN_OPSET = 7
_KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
    )


def _read(source: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        if _uses_external_data(proto):
            raise ModelLoadError(
                "this ModelProto references external data that is not loaded; "
                "load the model from its file path instead"
            )
        return proto, "<ModelProto>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            proto = onnx.load_from_string(bytes(source))
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"these bytes are not an ONNX model: {exc}") from None
        if _uses_external_data(proto):
            raise ModelLoadError(
                "the model references external data files; load it from its file path"
            )
        return proto, "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"no model file at {str(path)!r}")
        # An absolute path makes onnx check that external data stays inside the folder.
        path = path.resolve()
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except (DecodeError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not an ONNX model file: {exc}") from None
        except (FileNotFoundError, OSError) as exc:
            raise ModelLoadError(f"cannot read {path} or its external data: {exc}") from None
        except Exception as exc:  # onnx raises its own types for bad external data
            raise ModelLoadError(f"cannot load {path}: {exc}") from None
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
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"the model is not valid ONNX: {str(exc).splitlines()[0]}") from None


def load(source: str | os.PathLike | bytes | onnx.ModelProto) -> Model:
    """Load an ONNX model from a file path, bytes or an ``onnx.ModelProto``.

    The graph is validated and canonicalised (see :mod:`onnxplain.core.canonical`);
    the source is never modified.

    >>> import onnxplain as ox
    >>> model = ox.load(ox.examples.tiny_cnn())
    >>> model.input_name, model.outputs[0].shape
    ('input', ('batch', 3))
    """
    proto, where = _read(source)
    _validate(proto)
    try:
        ir_model = ir.from_proto(proto)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the graph of {where}: {exc}") from None
    return Model(canonicalize(ir_model), source=where)
