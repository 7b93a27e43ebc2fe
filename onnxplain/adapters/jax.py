"""Export a JAX function or a Flax module to ONNX (jax2onnx) and load it, checked.

JAX image models are usually channels-last (N, H, W, C); the exported model keeps the
layout the function takes. Parameters are baked into the graph as initializers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from onnxplain.adapters._common import (
    as_example,
    channels_last_unless_shown,
    check_rtol,
    explicit_pads,
    first_line,
    quiet_export,
    require,
    verified_model,
)
from onnxplain.core.errors import ExportError, InputValidationError
from onnxplain.core.model import Model


def _forward(fn: Any, params: Any) -> tuple[Callable[[Any], Any], str]:
    """``x -> output`` for a plain function (``fn(params, x)`` or ``fn(x)``), a Flax linen
    module (``module.apply(params, x)``) or a Flax nnx module (``module(x)``)."""
    try:
        import flax.linen as linen
    except ImportError:  # plain JAX without Flax
        linen = None
    if linen is not None and isinstance(fn, linen.Module):
        if params is None:
            raise InputValidationError(
                "a Flax linen module needs its variables: export(module, example, params=variables)"
            )
        variables = params if isinstance(params, Mapping) and "params" in params else {"params": params}
        return (lambda x: fn.apply(variables, x)), f"flax linen {type(fn).__name__}"
    if not callable(fn):
        raise InputValidationError(
            "export() takes a JAX function, a Flax linen module or a Flax nnx module, "
            f"got {type(fn).__name__}"
        )
    name = getattr(fn, "__name__", type(fn).__name__)
    if params is not None:
        return (lambda x: fn(params, x)), f"jax function {name}"
    return fn, f"jax {name}"


def export(fn: Any, example: Any, params: Any = None, opset: int | None = None, rtol: float = 1e-4,
           layout: str = "auto") -> Model:
    """Export a JAX/Flax model to ONNX with jax2onnx and return the loaded :class:`Model`.

    Parameters
    ----------
    fn : callable or flax module
        A Flax nnx module (called as ``fn(x)``), a Flax linen module (called as
        ``fn.apply(params, x)``), or a plain JAX function: ``fn(params, x)`` when ``params``
        is given, else ``fn(x)``.
    example : array-like
        An input batch (N, ...), N ≥ 1, in the layout the model takes (typically NHWC).
        The export is run on it and must match JAX: max |Δ| ≤ ``rtol`` × max |output|,
        else :class:`~onnxplain.ExportError`.
    params : pytree, optional
        The parameters (linen: the variables dict or its ``"params"`` entry); they become
        constants of the ONNX graph.
    opset : int, optional
        ONNX opset (jax2onnx's default otherwise).
    rtol : float
        Tolerance of the check, relative to the largest output.
    layout : str
        The input's layout, as :func:`onnxplain.load` takes it; ``"auto"`` reads it from
        the transpose to channels-first that jax2onnx writes before a convolution (through
        normalisation and resizing); a model without convolutions lacks it, and its images
        are taken as NHWC, JAX's convention, when they look channels-last (1 or 3 on the
        last axis, not on axis 1), else as NCHW with :func:`onnxplain.load`'s warning.

    The batch dimension is exported as dynamic. Where jax2onnx cannot trace a symbolic
    batch (``jax.image.resize``, Keras' ``Resizing``), the example's batch is exported and
    :func:`onnxplain.load` makes it dynamic when a check proves it safe. Needs
    ``pip install onnxplain[jax]`` (jax, flax, jax2onnx).

    Examples
    --------
    >>> import jax, numpy as np, onnxplain as ox  # doctest: +SKIP
    >>> w = np.ones((3, 2), np.float32)  # doctest: +SKIP
    >>> f = lambda p, x: jax.nn.relu(x.mean(axis=(1, 2))) @ p  # doctest: +SKIP
    >>> ox.adapters.jax.export(f, np.ones((1, 8, 8, 3), np.float32), params=w).num_classes  # doctest: +SKIP
    2
    """
    jax = require("jax", "jax", "JAX")
    jax2onnx = require("jax2onnx", "jax", "jax2onnx (the JAX to ONNX converter)")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise InputValidationError(f"opset must be an int ≥ 7 or None, got {opset!r}")
    rtol = check_rtol(rtol)
    x = as_example(example)
    forward, what = _forward(fn, params)
    try:
        expected = jax.device_get(forward(jax.numpy.asarray(x)))
    except Exception as exc:
        raise InputValidationError(
            f"the {what} does not run on the example of shape {x.shape}: {exc}"
        ) from exc
    kwargs: dict[str, Any] = {"opset": opset} if opset is not None else {}

    def convert(batch: Any) -> Any:
        spec = jax.ShapeDtypeStruct((batch, *x.shape[1:]), jax.numpy.float32)
        with quiet_export():
            return jax2onnx.to_onnx(forward, [spec], return_mode="proto", input_names=["input"],
                                    output_names=["output"], model_name="onnxplain_jax", **kwargs)

    def convert_any(batch: Any) -> Any:
        try:
            return convert(batch)
        except NotImplementedError as exc:  # jax2onnx's resize: antialiased, Lanczos
            if "resize" not in str(exc):
                raise
            with _resize_as_matrices(jax):
                return convert(batch)

    try:
        proto = convert_any("batch")
    except Exception as symbolic:  # e.g. jax.image.resize: shapes it cannot compute symbolically
        try:
            proto = convert_any(x.shape[0])  # the example's batch; load makes it dynamic where provable
        except Exception as fixed:
            raise ExportError(
                f"jax2onnx could not export the {what}: {first_line(symbolic)}; with the example's "
                f"batch: {first_line(fixed)}"
            ) from symbolic
    proto = explicit_pads(_as_jax_resizes(proto))
    return verified_model(proto, x, expected, rtol, f"jax2onnx ({what})",
                          layout=channels_last_unless_shown(proto) if layout == "auto" else layout)


@contextlib.contextmanager
def _resize_as_matrices(jax: Any) -> Iterator[None]:
    """``jax.image.resize`` traced as one matrix product per resized axis, meanwhile.

    jax2onnx converts no antialiased resize (``jax.image.resize``'s default, Keras'
    ``Resizing(antialias=True)``) and no Lanczos one. Every method but nearest is separable
    and linear, so each axis's (in, out) matrix is the resize of the identity along it,
    computed by JAX itself at trace time, and the traced function multiplies by it: what
    JAX computes, in operations jax2onnx converts."""
    import jax.numpy as jnp
    import numpy as np

    original = jax.image.resize

    def resize(image: Any, shape: Any, method: Any, antialias: bool = True, **kwargs: Any) -> Any:
        if str(getattr(method, "name", method)).lower() == "nearest":
            return original(image, shape, method, antialias=antialias, **kwargs)

        def same(size: Any, wanted: Any) -> bool:  # the batch: one symbolic dim
            return size is wanted or (isinstance(size, int) and isinstance(wanted, int) and size == wanted)

        resized = [(axis, int(size), int(wanted))
                   for axis, (size, wanted) in enumerate(zip(image.shape, shape)) if not same(size, wanted)]
        # (N, H, W, C) resized in H and W: computed channels-first, behind the transpose
        # that shows load the layout
        nhwc = image.ndim == 4 and {a for a, _, _ in resized} <= {1, 2}
        out = jnp.transpose(image, (0, 3, 1, 2)) if nhwc else image
        for axis, size, wanted in resized:
            with jax.ensure_compile_time_eval():
                basis = np.eye(size, dtype=np.float32)
                matrix = np.asarray(original(basis, (size, wanted), method, antialias=antialias, **kwargs))
            axis = axis + 1 if nhwc else axis
            out = jnp.moveaxis(jnp.tensordot(out, matrix.astype(out.dtype), axes=([axis], [0])), -1, axis)
        return jnp.transpose(out, (0, 2, 3, 1)) if nhwc else out

    try:  # jax2onnx patches jax.image.resize with its own primitive while it traces
        from jax2onnx.plugins.jax.image.resize import ImageResizePlugin
    except ImportError:
        ImageResizePlugin = None  # noqa: N806
    specs = ImageResizePlugin.__dict__.get("binding_specs") if ImageResizePlugin else None
    jax.image.resize = resize
    if specs is not None:
        ImageResizePlugin.binding_specs = classmethod(lambda cls: [])
    try:
        yield
    finally:
        jax.image.resize = original
        if specs is not None:
            ImageResizePlugin.binding_specs = specs


def _as_jax_resizes(proto: Any) -> Any:
    """jax2onnx's Resize nodes (``jax.image.resize``, Keras' ``Resizing`` on JAX) made to
    compute what JAX computes: JAX's nearest takes pixel floor((i + ½)·in/out), which is
    ``round_prefer_ceil`` (jax2onnx writes ``round_prefer_floor``: 1 % of the output off on a
    test model); its cubic is Keys' kernel renormalised over the taps inside the image,
    which is ``exclude_outside=1`` (jax2onnx leaves the edge taps in)."""
    from onnx import helper

    for node in proto.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("coordinate_transformation_mode", b"half_pixel") != b"half_pixel":
            continue
        mode = attrs.get("mode", b"nearest")
        if mode == b"nearest" and attrs.get("nearest_mode", b"round_prefer_floor") == b"round_prefer_floor":
            _set_attribute(node, "nearest_mode", "round_prefer_ceil")
        elif mode == b"cubic" and attrs.get("cubic_coeff_a") == -0.5:
            _set_attribute(node, "exclude_outside", 1)
    return proto


def _set_attribute(node: Any, name: str, value: Any) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
