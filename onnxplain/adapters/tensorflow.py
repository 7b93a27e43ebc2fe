"""Export a TensorFlow SavedModel, ``tf.function`` or TF-backend Keras model to ONNX (tf2onnx).

TensorFlow image models are channels-last (N, H, W, C); the exported model keeps that
layout. Keras 3 models on any backend are better served by :mod:`onnxplain.adapters.keras`.

What tf2onnx cannot convert is written for it:

- a function compiled with XLA (``tf.function(jit_compile=True)``), which grappler does not
  inline and tf2onnx leaves as ``StatefulPartitionedCall``: Keras 3 computes grouped
  convolutions so on CPU (ConvNeXt's depthwise ``Conv2D(groups=C)``). The function is
  traced for the conversion with ``jit_compile`` off: the same ops, inlined;
- ``Erfc``, which TensorFlow's exact GELU computes: written as ``1 − Erf(x)``;
- ``ScaleAndTranslate`` (``tf.image.resize`` antialiased or with a Lanczos, Gaussian or
  Mitchell kernel) and ``ResizeArea`` (``method="area"``, which tf2onnx mistranslates):
  written as two matrix products (:mod:`onnxplain.adapters._tf_resize`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from onnxplain._compat import triton_before_tensorflow
from onnxplain.adapters import _tf_resize
from onnxplain.adapters._common import (
    as_example,
    channels_last_unless_shown,
    check_rtol,
    explicit_pads,
    first_line,
    require,
    verified_model,
)
from onnxplain.core.errors import ExportError, InputValidationError
from onnxplain.core.model import Model


def _patch_tf2onnx_for_numpy2() -> None:
    # tf2onnx 1.17's constant folding still calls numpy functions removed in numpy 2;
    # Keras (installed with TensorFlow) ships the fix it uses for its own ONNX export.
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except Exception:  # an older Keras: tf2onnx works as it is for most graphs
        return
    patch_tf2onnx()


@contextlib.contextmanager
def _without_xla(tf: Any) -> Iterator[None]:
    """``tf.function(jit_compile=True)`` traced as a plain ``tf.function`` meanwhile (see the
    module): what is traced is converted, never run."""
    original = tf.function

    def function(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("jit_compile", None)
        return original(*args, **kwargs)

    tf.function = function
    try:
        yield
    finally:
        tf.function = original


def _erfc(ctx: Any, node: Any, name: str, args: Any) -> Any:
    """tf2onnx's missing ``Erfc`` (a custom op handler): ``Sub(1, Erf(x))``."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], name=utils.make_name(f"{node.name}_erf"))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    return node


def _pick_output(outputs: Any, output: str | None) -> Any:
    if isinstance(outputs, dict):
        if output is None:
            if len(outputs) != 1:
                raise InputValidationError(
                    f"the signature has outputs {sorted(outputs)}; choose one with output=NAME"
                )
            return next(iter(outputs.values()))
        if output not in outputs:
            raise InputValidationError(f"output must be one of {sorted(outputs)}, got {output!r}")
        return outputs[output]
    if isinstance(outputs, (list, tuple)):
        if output is None and len(outputs) == 1:
            return outputs[0]
        raise InputValidationError(
            f"the model returns {len(outputs)} outputs; wrap it in a function that returns the scores"
        )
    return outputs


def _callable(model: Any, signature: str, output: str | None, tf: Any) -> tuple[Callable, str]:
    """``x -> scores`` for a SavedModel path, a loaded SavedModel, a concrete function, a
    ``tf.function``, a Keras model or any callable of TensorFlow ops."""
    what = type(model).__name__
    owner = None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isdir(path):
            raise InputValidationError(f"no SavedModel directory at {path!r}")
        try:
            model = tf.saved_model.load(path)
        except Exception as exc:
            raise ExportError(f"TensorFlow cannot load the SavedModel at {path!r}: {exc}") from exc
        what = f"SavedModel {os.path.basename(os.path.normpath(path))}"
    keras_model = type(model).__module__.startswith(("keras", "tf_keras")) and hasattr(model, "call")
    functions = (tf.types.experimental.PolymorphicFunction, tf.types.experimental.ConcreteFunction)
    signatures = getattr(model, "signatures", None)
    if signatures is not None and len(signatures) and not keras_model and not isinstance(model, functions):
        if signature not in signatures:
            raise InputValidationError(f"signature must be one of {sorted(signatures)}, got {signature!r}")
        owner = model  # the signature's variables live as long as the loaded object
        model = signatures[signature]
        what = f"{what} signature {signature!r}"
    if isinstance(model, tf.types.experimental.ConcreteFunction):
        concrete = model
        args, kwargs = concrete.structured_input_signature
        if len(args) == 1 and not kwargs:
            return (lambda x, _owner=owner: _pick_output(concrete(x), output)), what
        if args or len(kwargs) != 1:
            raise InputValidationError(
                "the signature must take exactly one input tensor, it takes "
                f"{concrete.structured_input_signature}"
            )
        name = next(iter(kwargs))
        return (lambda x, _owner=owner: _pick_output(concrete(**{name: x}), output)), what
    if not callable(model):
        raise InputValidationError(
            "export() takes a SavedModel path, a loaded SavedModel, a tf.function, a Keras model "
            f"or a callable of TensorFlow ops, got {type(model).__name__}"
        )
    if keras_model:
        return (lambda x: _pick_output(model(x, training=False), output)), what
    # a tf.function's Python function, traced afresh (its own traces keep any XLA functions)
    python = getattr(model, "python_function", None) if isinstance(model, functions) else None
    call = python if python is not None else model
    return (lambda x: _pick_output(call(x), output)), what


def _inline_captured_constants(proto: Any, concrete: Any) -> None:
    """Make the graph inputs tf2onnx made of constant tensors the traced function captured
    (Keras' Normalization layer holds its mean and variance so: EfficientNet, ConvNeXt)
    initializers holding their values, in place."""
    from onnx import helper, numpy_helper

    if len(proto.graph.input) < 2:  # nothing captured became an input
        return
    values = {}
    for external, internal in getattr(concrete.graph, "captures", []):
        try:
            values[internal.name] = np.asarray(external.numpy())
        except Exception:  # a resource (a variable's handle), not a constant
            continue
    for graph_input in list(proto.graph.input[1:]):
        if graph_input.name in values:
            elem = graph_input.type.tensor_type.elem_type  # the type the graph reads it as
            array = values[graph_input.name].astype(helper.tensor_dtype_to_np_dtype(elem)) if elem \
                else values[graph_input.name]
            proto.graph.initializer.append(numpy_helper.from_array(array, graph_input.name))
            proto.graph.input.remove(graph_input)


def export(
    model: Any,
    example: Any,
    signature: str = "serving_default",
    output: str | None = None,
    opset: int | None = None,
    rtol: float = 1e-4,
    layout: str = "auto",
) -> Model:
    """Convert a TensorFlow model with tf2onnx and return the loaded :class:`Model`.

    Parameters
    ----------
    model : path, SavedModel, tf.function, Keras model or callable
        A SavedModel directory (or the object ``tf.saved_model.load`` returns: its
        ``signature`` is exported), a ``tf.function`` or a concrete function, a Keras model
        on the TensorFlow backend, or any callable of TensorFlow ops taking one image batch.
    example : array-like
        An input batch (N, ...), N ≥ 1, in the model's layout (TensorFlow: NHWC). The
        conversion is run on it and must match TensorFlow: max |Δ| ≤ ``rtol`` × max |output|,
        else :class:`~onnxplain.ExportError`.
    signature : str
        The SavedModel signature to export.
    output : str, optional
        The output to explain when the model returns a dict of tensors (SavedModel
        signatures do); required when there are several.
    opset : int, optional
        ONNX opset (tf2onnx's default otherwise).
    rtol : float
        Tolerance of the check, relative to the largest output.
    layout : str
        The input's layout, as :func:`onnxplain.load` takes it; ``"auto"`` reads it from
        the graph, where the transpose tf2onnx writes before a convolution shows it; images
        no convolution shows the layout of are taken as NHWC, TensorFlow's convention, when
        they look channels-last (1 or 3 on the last axis, not on axis 1).

    The batch dimension is exported as dynamic. Needs ``pip install onnxplain[tensorflow]``
    (tensorflow and tf2onnx).

    Examples
    --------
    >>> import numpy as np, tensorflow as tf, onnxplain as ox  # doctest: +SKIP
    >>> w = tf.constant(np.ones((3, 2), np.float32))  # doctest: +SKIP
    >>> f = tf.function(lambda x: tf.reduce_mean(x, axis=(1, 2)) @ w)  # doctest: +SKIP
    >>> ox.adapters.tensorflow.export(f, np.ones((1, 8, 8, 3), np.float32)).num_classes  # doctest: +SKIP
    2
    """
    triton_before_tensorflow()
    tf = require("tensorflow", "tensorflow", "TensorFlow")
    tf2onnx = require("tf2onnx", "tensorflow", "tf2onnx (the TensorFlow to ONNX converter)")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise InputValidationError(f"opset must be an int ≥ 7 or None, got {opset!r}")
    rtol = check_rtol(rtol)
    x = as_example(example)
    forward, what = _callable(model, signature, output, tf)
    spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32, name="input")
    function = tf.function(forward, input_signature=[spec], autograph=False)
    try:
        expected = np.asarray(function(tf.constant(x)))
    except InputValidationError:
        raise
    except Exception as exc:
        raise InputValidationError(
            f"the {what} does not run on the example of shape {x.shape}: {exc}"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _patch_tf2onnx_for_numpy2()
    kwargs: dict[str, Any] = {"opset": opset} if opset is not None else {}
    traced = tf.function(forward, input_signature=[spec], autograph=False)
    handlers = {"Erfc": (_erfc, []), "ResizeArea": (_tf_resize.resize_area_handler, [])}
    try:
        with warnings.catch_warnings(), _without_xla(tf):
            warnings.simplefilter("ignore")
            concrete = traced.get_concrete_function(spec)
            proto, _ = tf2onnx.convert.from_function(traced, input_signature=[spec],
                                                     custom_op_handlers=handlers, **kwargs)
    except Exception as exc:
        raise ExportError(
            f"tf2onnx could not convert the {what}: {first_line(exc)}"
        ) from exc
    _inline_captured_constants(proto, concrete)
    extra = [i.name for i in proto.graph.input[1:]]
    if extra:
        raise ExportError(
            f"tf2onnx turned tensors captured by the {what} into extra graph inputs {extra}; hold "
            "the weights in tf.Variable objects tracked by a tf.Module or Keras layer"
        )
    proto = _tf_resize.rewrite(proto, x)
    proto = explicit_pads(proto)
    return verified_model(proto, x, expected, rtol, f"tf2onnx ({what})",
                          layout=channels_last_unless_shown(proto) if layout == "auto" else layout)
