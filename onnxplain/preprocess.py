"""Image files in, model inputs out: reading, resizing, scaling, normalising, layout.

A :class:`Preprocess` spec says how a model wants its images fed. It is validated with
pydantic and stored as JSON next to the model (``model.onnx`` → ``model.json`` with a
``"preprocess"`` entry, or ``model.preprocess.json``), so the command line knows how to
feed a model it has never seen:

>>> from onnxplain.preprocess import Preprocess
>>> spec = Preprocess(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
>>> Preprocess.model_validate_json(spec.model_dump_json()) == spec
True

The pipeline is: decode (Pillow) → colour mode → resize (stretch, or resize the shorter
side and centre-crop) → ``x · scale`` → ``(x − mean) / std`` per channel → layout
(``NCHW`` or ``NHWC``) → dtype. :meth:`Preprocess.to_display` undoes the arithmetic for
pictures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pydantic

from onnxplain.core.errors import InputValidationError

if TYPE_CHECKING:
    from PIL import Image

    from onnxplain.core.model import Model

Layout = Literal["NCHW", "NHWC"]

_INTERPOLATION = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling


def _validation_error(what: str, exc: pydantic.ValidationError) -> InputValidationError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )
    return InputValidationError(f"{what}: {problems}")


class Preprocess(pydantic.BaseModel):
    """How to turn an image file into the model's input.

    ``size``: (height, width) the model takes, or None to keep the image's size.
    ``resize``: ``"stretch"`` (resize to ``size`` exactly) or ``"center_crop"`` (resize
    the shorter side to fit, then crop the centre, as ImageNet pipelines do).
    ``interpolation``: Pillow's resampling filter. ``color``: ``"RGB"``, ``"BGR"`` (RGB
    reversed, as OpenCV/Caffe models expect) or ``"L"`` (one grey channel).
    ``scale``: multiplies the 0–255 pixel values first (1/255 gives [0, 1]).
    ``mean``/``std``: then ``(x − mean) / std``, one value or one per channel.
    ``layout``: ``"NCHW"`` (PyTorch, most ONNX exports) or ``"NHWC"`` (Keras/TF).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    size: tuple[pydantic.PositiveInt, pydantic.PositiveInt] | None = None
    resize: Literal["stretch", "center_crop"] = "stretch"
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    color: Literal["RGB", "BGR", "L"] = "RGB"
    scale: float = pydantic.Field(default=1 / 255, gt=0)
    mean: tuple[float, ...] = pydantic.Field(default=(0.0,), min_length=1)
    std: tuple[float, ...] = pydantic.Field(default=(1.0,), min_length=1)
    layout: Layout = "NCHW"
    dtype: Literal["float32", "float16", "float64"] = "float32"

    @pydantic.model_validator(mode="after")
    def _check_channels(self) -> Preprocess:
        channels = self.channels
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) not in (1, channels):
                raise ValueError(
                    f"{field} has {len(values)} values; give 1 or {channels} (one per channel "
                    f"of color={self.color!r})"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self

    # -- construction ------------------------------------------------------------------
    @classmethod
    def parse(cls, data: Any, what: str = "preprocess") -> Preprocess:
        """Validate a dict (or a Preprocess); errors name the field."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise _validation_error(what, exc) from None

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> Preprocess:
        """Read a spec from a JSON file: either the spec itself or a model card with a
        ``"preprocess"`` entry (like ``onnxplain/data/shapes_cnn.json``)."""
        path = Path(source)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise InputValidationError(
                f"cannot read the preprocessing file {str(path)!r}: {exc.strerror}"
            ) from None
        except json.JSONDecodeError as exc:
            raise InputValidationError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("preprocess"), dict):
            data = data["preprocess"]
        return cls.parse(data, what=str(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON (the format :meth:`from_json` reads)."""
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def for_model(cls, model: Model) -> Preprocess:
        """A guess from the model's input shape when no spec is stored: the static
        height and width, a layout from where the 1- or 3-channel axis is, pixels scaled to
        [0, 1], no mean/std. Store a real spec next to the model when it differs."""
        shape = getattr(model, "user_input_shape", None) or model.input_spec.shape or ()
        if getattr(model, "layout", None) == "NHW":  # one-channel images, taken as (N, 1, H, W) too
            shape = model.input_spec.shape
        if len(shape) != 4:
            raise InputValidationError(
                f"the model input {model.input_name!r} has shape {shape}, not an image batch "
                "(N, C, H, W) or (N, H, W, C)"
            )
        layout = getattr(model, "layout", None)
        if layout in ("NCHW", "NHWC"):
            nhwc = layout == "NHWC"
        else:
            nhwc = shape[3] in (1, 3) and shape[1] not in (1, 3)
        channels, h, w = (shape[3], shape[1], shape[2]) if nhwc else (shape[1], shape[2], shape[3])
        size = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
        color = "L" if channels == 1 else "RGB"
        dtype = str(model.input_dtype) if str(model.input_dtype) in ("float16", "float64") else "float32"
        return cls(size=size, color=color, layout="NHWC" if nhwc else "NCHW", dtype=dtype)

    # -- use ---------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        mean = np.broadcast_to(np.asarray(self.mean, np.float64), (self.channels,))
        std = np.broadcast_to(np.asarray(self.std, np.float64), (self.channels,))
        return mean, std

    def resize_image(self, image: Image.Image) -> Image.Image:
        """Colour conversion and resizing of one Pillow image."""
        image = image.convert("L" if self.color == "L" else "RGB")
        if self.size is None:
            return image
        h, w = self.size
        resample = _INTERPOLATION[self.interpolation]
        if self.resize == "stretch":
            return image.resize((w, h), resample=resample)
        factor = max(h / image.height, w / image.width)
        rh, rw = max(h, round(image.height * factor)), max(w, round(image.width * factor))
        image = image.resize((rw, rh), resample=resample)
        top, left = (rh - h) // 2, (rw - w) // 2
        return image.crop((left, top, left + w, top + h))

    def pixels(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Resized display pixels (N, H, W, 3) uint8 (grey images repeated to 3)."""
        out = [np.asarray(self.resize_image(_as_pil(img))) for img in images]
        _same_size(out)
        batch = np.stack(out)
        return np.repeat(batch[..., None], 3, axis=-1) if batch.ndim == 3 else batch

    def apply(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Pillow images or uint8 arrays (H, W[, C]) → the model's input batch."""
        if not len(images):
            raise InputValidationError("no images to preprocess")
        arrays = [np.asarray(self.resize_image(_as_pil(img)), dtype=np.float64) for img in images]
        _same_size(arrays)
        x = np.stack(arrays)
        if x.ndim == 3:
            x = x[..., None]
        if self.color == "BGR":
            x = x[..., ::-1]
        mean, std = self._arrays()
        x = (x * self.scale - mean) / std
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def load(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Read image files and preprocess them into one batch."""
        return self.apply([read_image(p) for p in paths])

    def to_display(self, batch: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply`'s arithmetic: a model input batch → (N, H, W, 3) uint8."""
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim == 3:
            x = x[None]
        if self.layout == "NCHW":
            x = x.transpose(0, 2, 3, 1)
        mean, std = self._arrays()
        if x.shape[-1] != self.channels:
            raise InputValidationError(
                f"batch of shape {batch.shape} does not have {self.channels} channels in "
                f"layout {self.layout}"
            )
        x = (x * std + mean) / self.scale
        if self.color == "BGR":
            x = x[..., ::-1]
        if self.channels == 1:
            x = np.repeat(x, 3, axis=-1)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _as_pil(image: Any) -> Image.Image:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputValidationError(
            f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
            arr = arr * 255
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _same_size(arrays: list[np.ndarray]) -> None:
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise InputValidationError(
            f"the images have different sizes {sorted(sizes)}; set Preprocess.size to batch them"
        )


#: Largest image read (pixels); a bigger file is refused rather than decoded.
MAX_IMAGE_PIXELS = 100_000_000


def read_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file (PNG, JPEG, BMP, WebP... whatever Pillow decodes), fully loaded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputValidationError(f"no image file at {str(path)!r}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise InputValidationError(
                    f"{path} is {img.width}×{img.height} pixels, over {MAX_IMAGE_PIXELS}; "
                    "downscale it first"
                )
            img.load()
            return img.copy()
    except UnidentifiedImageError:
        raise InputValidationError(
            f"{path} is not an image file Pillow can read (PNG, JPEG, BMP, WebP, ...)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputValidationError(f"cannot decode the image {path}: {exc}") from None


def find_spec(model_path: str | os.PathLike) -> Preprocess | None:
    """The spec stored next to a model file: ``<stem>.preprocess.json``, or ``<stem>.json``
    with a ``"preprocess"`` entry. None when there is neither."""
    path = Path(model_path)
    for candidate in (path.with_suffix(".preprocess.json"), path.with_suffix(".json")):
        if not candidate.is_file():
            continue
        if candidate.name.endswith(".preprocess.json"):
            return Preprocess.from_json(candidate)
        try:
            data = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("preprocess"), dict):
            return Preprocess.parse(data["preprocess"], what=str(candidate))
    return None


__all__ = ["MAX_IMAGE_PIXELS", "Layout", "Preprocess", "find_spec", "read_image"]
