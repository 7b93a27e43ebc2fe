"""What every method shares: backend choice, input checks, targets, batching, progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
from tqdm.auto import tqdm

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.targets import Objective, TargetLike, resolve_target
from onnxplain.core.validation import broadcast_to_inputs, check_input

T = TypeVar("T")


class Attribution:
    """Base of all methods.

    ``model``: a :class:`~onnxplain.Model`, or a :class:`~onnxplain.backends.Backend`
    already bound to one (e.g. a ``CallableBackend`` around a served model).
    ``backend``: ``"auto"`` (the first registered backend with what the method
    ``requires``: forward-only methods get ONNX Runtime, gradient methods torch), a
    registered name, or a Backend instance. ``backend_options`` go to the backend factory
    (``device=``, ``providers=``, ``max_batch_size=``...).

    Targets are documented once, in :mod:`onnxplain.core.targets`.
    """

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.FORWARD})

    def __init__(
        self, model: Model | Backend, backend: str | Backend = "auto", **backend_options: Any
    ) -> None:
        name = type(self).__name__
        if isinstance(model, Backend):
            model.require(self.requires, name)
            self.backend = model
            self.model = model.model
        elif isinstance(model, Model):
            self.model = model
            self.backend = model.backend_for(self.requires, backend, what=name, **backend_options)
        else:
            raise InputValidationError(
                f"{name} takes an onnxplain Model (from ox.load) or a Backend, "
                f"got {type(model).__name__}"
            )

    # -- shared helpers ----------------------------------------------------------------
    def _inputs(self, inputs: Any) -> np.ndarray:
        return check_input(self.model, inputs)

    def _objective(self, x: np.ndarray, target: TargetLike) -> Objective:
        classes = self.model.num_classes if self.model is not None else None
        return resolve_target(
            target, len(x), self.backend.output_name, classes, predict=lambda: self.backend.predict(x)
        )

    def _scores(self, batch: np.ndarray, objective: Objective) -> np.ndarray:
        """The objective for each row of ``batch`` from a forward pass."""
        out = self.backend.forward(batch, outputs=[objective.tensor])[objective.tensor]
        return np.asarray(objective.scores(out), dtype=np.float64)

    @staticmethod
    def _progress(items: Iterable[T], total: int, show: bool | None, desc: str) -> Iterator[T]:
        """A tqdm bar: ``show=None`` shows it on terminals only, False never."""
        disable = None if show is None else not show
        yield from tqdm(items, total=total, disable=disable, desc=desc, leave=False)


def expand_baseline(baselines: Any, x: np.ndarray, name: str = "baselines") -> np.ndarray:
    """Broadcast a scalar, a single example or a per-example array to ``x``'s shape."""
    if baselines is None:
        return np.zeros_like(x)
    return broadcast_to_inputs(baselines, x, name)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (N, h, w) maps to (N, H, W) like ``torch.nn.functional.interpolate``
    (``mode="bilinear", align_corners=False``)."""
    n, h, w = maps.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return maps.copy()

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, None)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(maps.dtype)

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    rows = maps[:, y0, :] * (1 - wy)[None, :, None] + maps[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def resize_nearest(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (N, h, w) maps to (N, H, W) like ``torch.nn.functional.interpolate``
    (``mode="nearest"``: source index floor(i · h / H), computed in float32)."""
    _, h, w = maps.shape

    def axis(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(src, n_in - 1)

    return maps[:, axis(h, size[0])][:, :, axis(w, size[1])]
