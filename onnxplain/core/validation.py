"""Validation of what users pass in, in one place for every method."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pydantic

from onnxplain.core.canonical import INTEGER_INPUTS
from onnxplain.core.errors import InputValidationError

if TYPE_CHECKING:
    from onnxplain.core.model import Model

P = TypeVar("P", bound=pydantic.BaseModel)


class Params(pydantic.BaseModel):
    """Base of method parameter sets: strict, immutable, errors name the field."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


#: A random seed: a non-negative integer, or None for fresh entropy (numpy's rule).
Seed = pydantic.NonNegativeInt | None


def check_seed(seed: Any, what: str) -> int | None:
    """``seed`` checked to be None or a non-negative integer (numpy refuses the rest)."""
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputValidationError(f"{what}: seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def validate_params(cls: type[P], what: str, **values: Any) -> P:
    """Build ``cls(**values)``; a pydantic error becomes an InputValidationError."""
    try:
        return cls(**values)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
        )
        raise InputValidationError(f"{what}: {problems}") from None


def rank_hint(shape: tuple[int, ...], want: tuple[Any, ...] | None) -> str:
    """What to do about an array of ``shape`` whose rank is not that of ``want``, the model
    input's shape: reshape flattened images (N, F) into the images, or add the batch axis."""
    image = tuple(want[1:]) if want else ()
    if len(shape) == 2 and len(image) >= 2 and all(isinstance(d, int) and d > 0 for d in image) \
            and shape[1] == int(np.prod(image)):
        return f"; these look like flattened images: pass x.reshape(-1, {', '.join(map(str, image))})"
    return "; add the batch axis if it is missing"


def check_input(model: Model | None, x: Any, name: str = "inputs") -> np.ndarray:
    """Return ``x`` as a contiguous array of the model's input dtype, or raise.

    Accepts any floating-point array of shape (N, ...) matching the model input's rank
    and static dims. Integer, boolean, NaN and Inf inputs are refused (integers are taken
    where the model's file takes integer images: ``model.converted_from``). Other float dtypes
    are converted to the model's input dtype; a conversion that loses precision (float64
    to float32) warns once per call site.
    """
    if not isinstance(x, np.ndarray):
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
            x = x.detach().cpu().numpy()
        else:
            raise InputValidationError(
                f"{name} must be a numpy array of shape (N, C, H, W), got {type(x).__name__}"
            )
    integer = model is not None and model.converted_from in INTEGER_INPUTS.values()
    if integer and np.issubdtype(x.dtype, np.integer):  # the model's own input type, as the file says
        x = x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputValidationError(
            f"{name} must hold floating-point values, got dtype {x.dtype}; convert and "
            "normalise the images as the model expects"
        )
    if x.ndim == 0 or 0 in x.shape:
        raise InputValidationError(
            f"{name} must be a non-empty batch (N, ...) with every axis longer than 0, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise InputValidationError(f"{name} contains NaN or Inf values")
    if model is None:
        return np.ascontiguousarray(x, dtype=np.float32)
    spec = model.input_spec
    if spec.shape is not None:
        if x.ndim != len(spec.shape):
            raise InputValidationError(
                f"{name} has shape {x.shape} but the model input {spec.name!r} has rank "
                f"{len(spec.shape)} {spec.shape}{rank_hint(x.shape, spec.shape)}"
            )
        for axis, (got, want) in enumerate(zip(x.shape[1:], spec.shape[1:]), start=1):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputValidationError(
                    f"{name} has shape {x.shape} but the model input {spec.name!r} expects "
                    f"{spec.shape} (axis {axis}: {got} != {want})"
                )
    # a float64 model computes in float32 (load says so): its own input type is not a loss to warn of
    own = model.converted_from is not None and np.dtype(x.dtype).name == model.converted_from
    if np.dtype(x.dtype).itemsize > np.dtype(spec.dtype).itemsize and not own:
        warnings.warn(
            f"{name} are {x.dtype}; converted to the model's input dtype {spec.dtype}",
            UserWarning,
            stacklevel=3,
        )
    return np.ascontiguousarray(x, dtype=spec.dtype)


def as_numbers(value: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    """``value`` as an array of ``dtype``; what is not numbers is refused naming ``name``."""
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InputValidationError(
            f"{name} must be numbers (a scalar or an array), got {type(value).__name__} {value!r:.60}"
        ) from None


def broadcast_to_inputs(value: Any, x: np.ndarray, name: str) -> np.ndarray:
    """Broadcast a scalar, a single example or a per-example array to ``x``'s shape
    (read-only view, ``x``'s dtype); ``name`` is the argument named in the error."""
    b = as_numbers(value, name, x.dtype)
    if b.ndim == x.ndim - 1:
        b = b[None]
    try:
        return np.broadcast_to(b, x.shape)
    except ValueError:
        raise InputValidationError(
            f"{name} of shape {b.shape} cannot be broadcast to the inputs' shape {x.shape}; "
            "pass a scalar, one example (C, H, W) or one per example (N, C, H, W)"
        ) from None
