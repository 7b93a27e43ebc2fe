"""``onnxplain.load``: read an ONNX model safely, validate it and canonicalise its graph."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxplain.core.batch import add_batch_axis, fixed_batch_size, make_batch_dynamic, onnx_batch_note
from onnxplain.core.canonical import (
    FLOAT_TYPES,
    INTEGER_INPUTS,
    canonicalize,
    downcast_float64,
    float_input,
    float_outputs,
    upcast_bfloat16,
    upcast_float16,
)
from onnxplain.core.errors import InputValidationError, ModelLoadError
from onnxplain.core.fixed_inputs import fix_inputs
from onnxplain.core.layout import (
    LAYOUTS,
    check_image_shape,
    check_layout,
    detect_flattened_image,
    detect_layout,
    looks_channels_last,
    make_input_channels_first,
    make_input_images,
)
from onnxplain.core.model import CONVERTED_KEY, GRAPH_LAYOUT_KEY, LAYOUT_KEY, Model
from onnxplain.core.quantized import is_quantized, simulate

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


def _validate(proto: onnx.ModelProto, allowed_domains: frozenset[str] = frozenset()) -> None:
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
         and n.domain not in allowed_domains and (n.domain, n.op_type) not in local}
    )
    if unknown:
        raise ModelLoadError(
            f"the model uses operators from custom domains {unknown}, which onnxplain refuses by "
            "default; export with standard ONNX operators only, or, if you trust this model, "
            f"allow them with load(..., allowed_domains={unknown}) (ONNX Runtime implements "
            "'com.microsoft' itself; other domains also need custom_op_libraries=[path])"
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


@functools.lru_cache(maxsize=1)
def runtime_limits() -> tuple[int, int]:
    """(newest default-domain opset, newest IR version) the installed ONNX Runtime runs.

    onnx defines opsets before runtimes implement them (onnx 1.23: opset 28; ONNX
    Runtime 1.31: 26); found once by offering ONNX Runtime a one-node model.
    """
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a hard dependency
        return onnx.defs.onnx_opset_version(), onnx.IR_VERSION

    def runs(opset: int, ir_version: int) -> bool:
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
        probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                       ir_version=ir_version)
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:
            return False
        return True

    opset = next((k for k in range(onnx.defs.onnx_opset_version(), UPGRADE_TO, -1) if runs(k, 8)), UPGRADE_TO)
    ir_version = next((v for v in range(onnx.IR_VERSION, 7, -1) if runs(UPGRADE_TO, v)), 8)
    return opset, ir_version


def _fit_runtime(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A model stamped with an opset newer than ONNX Runtime runs, converted down to the
    newest it runs (onnx's version converter; the original is kept if that fails)."""
    opsets = {o.domain: o.version for o in proto.opset_import}
    default = opsets.get("", opsets.get("ai.onnx", 0))
    newest, newest_ir = runtime_limits()
    if default <= newest and proto.ir_version <= newest_ir:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, newest) if default > newest else proto
        converted.ir_version = min(converted.ir_version, newest_ir)
        onnx.checker.check_model(converted)
    except Exception as exc:
        logger.warning("could not convert opset %s to %s for ONNX Runtime: %s", default, newest, exc)
        return proto
    return converted


def _explain_output(proto: onnx.ModelProto, output: str | None) -> None:
    """Put the graph output named ``output`` first (in place): the model explains the first
    floating-point output, in every graph derived from it too."""
    if output is None:
        return
    outputs = list(proto.graph.output)
    names = [o.name for o in outputs]
    if not isinstance(output, str) or output not in names:
        raise InputValidationError(f"output must be one of the model's outputs {names}, got {output!r}")
    chosen = outputs[names.index(output)]
    elem = chosen.type.tensor_type.elem_type
    if elem not in FLOAT_TYPES | {onnx.TensorProto.UNDEFINED}:  # undefined: not known to be integer
        raise InputValidationError(
            f"output {output!r} holds {onnx.TensorProto.DataType.Name(elem)}, not floating-point "
            "scores: there is nothing to explain in it"
        )
    reordered = [chosen, *(o for o in outputs if o.name != output)]
    del proto.graph.output[:]
    proto.graph.output.extend(reordered)


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


def _custom_options(
    allowed_domains: str | Iterable[str], custom_op_libraries: str | os.PathLike | Iterable[str | os.PathLike]
) -> tuple[frozenset[str], tuple[str, ...]]:
    """Check ``load``'s opt-ins: domain names, and library paths that exist (made absolute)."""
    allowed_domains = () if allowed_domains is None else allowed_domains
    custom_op_libraries = () if custom_op_libraries is None else custom_op_libraries
    if not isinstance(allowed_domains, (str, Iterable)) or not isinstance(
            custom_op_libraries, (str, os.PathLike, Iterable)):
        raise InputValidationError(
            "allowed_domains takes domain names and custom_op_libraries file paths (a list each), got "
            f"{allowed_domains!r} and {custom_op_libraries!r}"
        )
    domains = [allowed_domains] if isinstance(allowed_domains, str) else list(allowed_domains)
    bad = [d for d in domains if not isinstance(d, str) or d in _KNOWN_DOMAINS]
    if bad:
        raise InputValidationError(
            f"allowed_domains takes custom operator domain names such as 'com.microsoft', got {bad}"
        )
    libs = ([custom_op_libraries] if isinstance(custom_op_libraries, (str, os.PathLike))
            else list(custom_op_libraries))
    paths = []
    for lib in libs:
        if not isinstance(lib, (str, os.PathLike)):
            raise InputValidationError(f"custom_op_libraries takes file paths, got {lib!r}")
        path = Path(lib).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"custom_op_libraries: no library file at {str(path)!r}")
        paths.append(str(path.resolve()))
    return frozenset(domains), tuple(paths)


def load(
    source: str | os.PathLike | bytes | onnx.ModelProto,
    *,
    max_model_bytes: int = MAX_MODEL_BYTES,
    max_external_bytes: int = MAX_EXTERNAL_BYTES,
    allowed_domains: str | Iterable[str] = (),
    custom_op_libraries: str | os.PathLike | Iterable[str | os.PathLike] = (),
    layout: str = "auto",
    image_shape: Sequence[int] | None = None,
    fixed_inputs: Mapping[str, Any] | None = None,
    output: str | None = None,
    dynamic_batch: bool = True,
) -> Model:
    """Load an ONNX model from a file path, bytes or an ``onnx.ModelProto``.

    Safe for files from elsewhere: sizes are capped (``max_model_bytes``,
    ``max_external_bytes``), external data must lie inside the model's folder (no
    absolute paths, ``..``, symlinks or hard links out), the model is checked with
    ``onnx.checker`` (full check), operators from custom domains are refused and no
    custom-op library is loaded unless you name it. The graph is then canonicalised (see
    :mod:`onnxplain.core.canonical`); the source is never modified.

    Custom operators are an explicit opt-in, for models you trust:

    - ``allowed_domains``: operator domains to accept besides the standard ones, e.g.
      ``["com.microsoft"]``, whose contrib operators (``Gelu``, ``FusedConv``,
      ``QuickGelu``, ...) ONNX Runtime implements itself. Forward-only methods (Occlusion,
      RISE, LIME, SHAP, Score-CAM) then run on ONNX Runtime; the torch backend, and with
      it the gradient methods, raises :class:`~onnxplain.UnsupportedOperatorError`
      naming the operators it cannot convert.
    - ``custom_op_libraries``: shared libraries (file paths) that implement other
      domains; the ONNX Runtime backend registers exactly these with
      ``SessionOptions.register_custom_ops_library`` when it builds its sessions. A
      library runs native code in this process: pass only ones you trust, and list
      their domains in ``allowed_domains`` too. A path that is not a file is refused.

    What exporters leave is made uniform:

    - ``layout``: ``"auto"`` detects a channels-last input (Keras, tf2onnx, jax2onnx: an
      (N, H, W, C) input followed by ``Transpose(perm=[0, 3, 1, 2])``) and one-channel
      images without a channel axis (an (N, H, W) input that the graph unsqueezes or
      reshapes to rank 4: ``"NHW"``); ``"NCHW"``, ``"NHWC"`` or ``"NHW"`` say it. A model
      saved by :meth:`Model.save` records its layout. An NHWC
      (NHW) model takes and returns arrays in NHWC (NHW) while methods compute channels
      first (see :mod:`onnxplain.core.layout`); ``model.layout`` says which.
    - ``image_shape``: a model whose input is flattened images, (N, F) (scikit-learn
      pipelines, pixel MLPs, ``x.view(-1, 1, 28, 28)`` inside the model), takes the images
      instead, (N, *image_shape), flattened in C order by a ``Flatten`` the graph gets in
      front: ``(C, H, W)``, ``(H, W, C)`` with ``layout="NHWC"``, or ``(H, W)`` (layout
      ``"NHW"``). A flattened input that the graph itself reshapes into (N, C, H, W), or
      into (N, H, W, C) and then transposes, is detected without it. A model whose input
      is flattened images loads as (N, F) otherwise, and image methods need the images.
    - ``fixed_inputs``: a model that takes more than the image (side information, a flag,
      a detection export's image size) is explained with every other input held at the
      value given here by name; one with a batch axis takes one example's value, repeated
      for every image (see :mod:`onnxplain.core.fixed_inputs`).
    - ``output``: the graph output methods explain, by name (``model.output_names``); by
      default the first floating-point one (a scikit-learn classifier's probabilities, not
      its int64 label). The others stay reachable with
      :class:`~onnxplain.OutputTarget`.
    - ``dynamic_batch``: a batch dim fixed by the export is made dynamic when that provably
      keeps the outputs (see :mod:`onnxplain.core.batch`); otherwise a warning says why and
      the backends run the fixed batch size per call (always for models with custom
      operator domains, whose check would need their libraries).
    - opsets below 11 are upgraded to 13 with ``onnx.version_converter``; opsets newer
      than the installed ONNX Runtime runs (up to ``onnx.defs.onnx_opset_version()``) are
      converted down to its newest (:func:`runtime_limits`); the others load as they are.
    - float16 and bfloat16 models, and mixed-precision ones (Keras' ``mixed_float16``), are
      computed in float32 (weights upcast exactly, results within float16 or bfloat16
      rounding of the model's; ``model.converted_from == "float16"``, ``"bfloat16"``: ONNX
      defines no bfloat16 convolution, so a torch module in bfloat16 exports a graph that
      runs nowhere as it is), and so are float64 models of standard operators, which ONNX
      Runtime has no CPU convolutions for (results within float32 rounding; ``"float64"``).
    - a model that takes integer images (uint8, int8, uint16, int16) and only casts them to
      float, or dequantizes them per tensor, takes float32 instead: the same results on
      integer values, the same formula between them, which gradients and perturbations
      need (``model.converted_from == "uint8"``, ...; methods take integer arrays too).
      An integer input read any other way is refused.
    - a quantized model that returns integer scores (its last ``QuantizeLinear`` or
      ``QLinear*`` operator's uint8, int8, ...; per-tensor scale) returns the real scores
      they stand for, ``(q − zero point) · scale``, in float32: the same ranking, and the
      differences, softmaxes and gradients that methods take are those of the scores.
    - a :class:`~onnxplain.preprocess.Preprocess` spec stored in the metadata
      (``"onnxplain.preprocess"``, JSON) becomes ``model.preprocess``.

    >>> import onnxplain as ox
    >>> model = ox.load(ox.examples.tiny_cnn())
    >>> model.input_name, model.outputs[0].shape
    ('input', ('batch', 3))

    A model with a contrib operator of ONNX Runtime loads only with the opt-in:

    >>> proto = ox.examples.tiny_cnn()
    >>> proto.graph.node[1].op_type, proto.graph.node[1].domain = "Gelu", "com.microsoft"
    >>> _ = proto.opset_import.add(domain="com.microsoft", version=1)
    >>> ox.load(proto)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ModelLoadError: the model uses operators from custom domains ['com.microsoft'], ...
    >>> ox.load(proto, allowed_domains=["com.microsoft"]).num_classes
    3
    """
    domains, libraries = _custom_options(allowed_domains, custom_op_libraries)
    for name, limit in (("max_model_bytes", max_model_bytes), ("max_external_bytes", max_external_bytes)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputValidationError(f"{name} must be a positive number of bytes, got {limit!r}")
    if fixed_inputs is not None and not isinstance(fixed_inputs, Mapping):
        raise InputValidationError(
            f"fixed_inputs must map input names to values, e.g. {{'mask': m}}, got {fixed_inputs!r}"
        )
    wanted = check_layout(layout)
    image = check_image_shape(image_shape)
    proto, where = _read(source, max_model_bytes, max_external_bytes)
    # before the check: ONNX's Conv has no bfloat16, and jax2onnx's mixed-precision graphs
    # type float16 values as float32 in places, which computing all in float32 makes true
    upcast = upcast_float16(proto)
    upcast_bf16 = upcast_bfloat16(proto)
    _validate(proto, domains)
    proto = _drop_zipmap(_fit_runtime(_upgrade_opset(proto)))
    # IR 3 (opset 7/8 exports) wants every initializer listed as an input; canonicalisation
    # lists them no more, and a derived graph (LRP's) may leave one unused: IR 4 allows both
    proto.ir_version = max(proto.ir_version, 4)
    _explain_output(proto, output)
    for name in fix_inputs(proto, fixed_inputs or {}):
        logger.info("the model's input %r is held at the value fixed_inputs gives", name)
    integer = float_input(proto)
    for name in float_outputs(proto):
        logger.info("the model's integer output %r is dequantized: its scores are the real values", name)
    downcast = downcast_float64(proto)
    try:  # canonicalize raises only what reading the graph raises
        ir_model = canonicalize(lambda: ir.from_proto(proto))
    except Exception as exc:
        raise ModelLoadError(f"cannot read the graph of {where}: {exc}") from None
    ir_model, wanted = _unflattened(ir_model, image, wanted)
    ir_model, user_layout = _channels_first(ir_model, wanted)
    for name in add_batch_axis(ir_model):
        logger.info("the output %r of this one-image model has no batch axis: it gets one", name)
    note = None
    fixed = fixed_batch_size(ir_model)
    if dynamic_batch and fixed is not None and not libraries and not domains:
        ir_model, reason = make_batch_dynamic(ir_model)
        if reason is not None:
            note = onnx_batch_note(fixed, reason)
            warnings.warn(note, UserWarning, stacklevel=2)
    runtime = None
    if is_quantized(ir_model):  # ONNX Runtime runs it as written; the rest sees its simulation
        try:
            runtime, ir_model = ir_model, simulate(ir_model)
        except Exception as exc:  # noqa: BLE001 - forward-only methods must still run
            logger.warning("no float simulation of this quantized model (%s: %s); gradient and rule "
                           "methods are unavailable", type(exc).__name__, exc)
    model = Model(ir_model, source=where, custom_op_libraries=libraries, layout=user_layout,
                  runtime=runtime)
    model.batch_note = note
    saved = dict(ir_model.metadata_props).get(CONVERTED_KEY)  # a model Model.save wrote
    if saved in ("float16", "bfloat16", "float64", *INTEGER_INPUTS.values()):
        model.converted_from = saved
    if upcast:  # computed in float16, whole or in part (Keras' mixed_float16)
        model.converted_from = "float16"
    if upcast_bf16:
        model.converted_from = "bfloat16"
    if downcast:
        model.converted_from = "float64"
    if integer is not None:
        model.converted_from = integer
    return model


def _unflattened(ir_model: ir.Model, image: tuple[int, ...] | None,
                 wanted: str | None) -> tuple[ir.Model, str | None]:
    """The model with image input (N, *image) in front of its flattened (N, F) one, and the
    layout of those images (see ``load``): ``image`` given, or detected in the graph."""
    if image is None:
        found = detect_flattened_image(ir_model)
        if found is None:
            return ir_model, wanted
        image, detected = found
        if wanted not in (None, detected):
            raise ModelLoadError(
                f"the model's flattened input is reshaped into {detected} images {image}, not "
                f"layout={wanted!r}; pass image_shape to read the features another way"
            )
        wanted = detected
    elif len(image) == 2:
        if wanted not in (None, "NHW"):
            raise ModelLoadError(f"image_shape={image} is one-channel images (H, W), layout 'NHW', "
                                 f"not layout={wanted!r}")
        wanted = "NHW"
    else:
        if wanted == "NHW":
            raise ModelLoadError(f"layout='NHW' takes image_shape=(H, W), got {image}")
        wanted = wanted or "NCHW"
    try:
        make_input_images(ir_model, image)
    except InputValidationError as exc:
        raise ModelLoadError(str(exc)) from None
    return ir_model, wanted


def _channels_first(ir_model: ir.Model, wanted: str | None) -> tuple[ir.Model, str]:
    """The model with a channels-first input, and the user's layout (see ``load``)."""
    props = dict(ir_model.metadata_props)
    saved = check_layout(props.get(LAYOUT_KEY)) if props.get(LAYOUT_KEY) in LAYOUTS else None
    user_layout = wanted or saved or detect_layout(ir_model)
    suspect = looks_channels_last(ir_model) if not (wanted or saved) and user_layout == "NCHW" else None
    if suspect is not None:
        warnings.warn(
            f"the input's shape {suspect} looks channels-last, but no transpose to "
            "channels-first was found after it, so the model is read as NCHW (axis 1 the "
            "channels); if its images are (N, H, W, C), load it with layout='NHWC'",
            UserWarning, stacklevel=3,
        )
    # a model written by Model.save already has its channels-first input
    already = props.get(GRAPH_LAYOUT_KEY) == "NCHW" and saved is not None and user_layout == saved
    if user_layout != "NCHW" and not already:
        try:
            ir_model = make_input_channels_first(ir_model, user_layout)
        except InputValidationError as exc:
            raise ModelLoadError(str(exc)) from None
    return ir_model, user_layout


