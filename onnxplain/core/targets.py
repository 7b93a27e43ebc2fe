"""Targets: what an explanation explains, defined once for every method.

A target is one of

- ``None``: the class the model predicts for each example (argmax of the output);
- an ``int``: the same output index for every example;
- a sequence of ints (or a 1-D integer array): one output index per example;
- ``Neuron(layer, index)``: one unit of an internal tensor (``index`` is an int into the
  flattened non-batch dims, or a tuple such as ``(channel, row, col)``, one entry per
  non-batch dim); indices are >= 0 and within the tensor's shape: negative ones do not
  wrap around (as they would in Captum) but raise ``InputValidationError``, on every backend;
- ``Channel(layer, channel)``: the mean activation of one channel of a feature map.

``resolve_target`` turns any of them into an :class:`Objective`, the single object every
backend understands: which tensor, and which scalar per example to take from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError


@dataclass(frozen=True)
class Neuron:
    """One unit of an internal tensor: ``layer`` is a tensor name from ``model.layers()``."""

    layer: str
    index: int | tuple[int, ...]


@dataclass(frozen=True)
class Channel:
    """The spatial mean of channel ``channel`` of the feature map ``layer``."""

    layer: str
    channel: int


TargetLike = None | int | Sequence[int] | np.ndarray | Neuron | Channel


@dataclass(frozen=True)
class Objective:
    """A scalar per example, read from one tensor of the model.

    ``kind == "index"``: ``index`` is an (N, k) int array; k == 1 indexes the flattened
    non-batch dims, k > 1 indexes the dims one by one. ``kind == "channel"``: ``index`` is
    an (N, 1) array of channel numbers and the score is that channel's mean.
    """

    tensor: str
    kind: str
    index: np.ndarray

    def scores(self, values: Any) -> Any:
        """Select the per-example scores from ``values`` (numpy array or torch tensor)."""
        n = values.shape[0]
        if n != self.index.shape[0]:
            raise InputValidationError(
                f"target has {self.index.shape[0]} entries but the batch has {n} examples"
            )
        self._check_bounds(tuple(int(d) for d in values.shape[1:]))
        same = self._shared_index
        if same is not None:  # basic indexing: no index arrays to build (or to send to a GPU)
            if self.kind == "channel":
                picked = values[:, same[0]].reshape(n, -1).mean(1)
            elif len(same) == 1:
                picked = values.reshape(n, -1)[:, same[0]]
            else:
                picked = values[(slice(None), *same)]
            return picked.copy() if isinstance(picked, np.ndarray) else picked  # no view of values
        rows = np.arange(n)
        if self.kind == "channel":
            selected = values[rows, self.index[:, 0]]
            return selected.reshape(n, -1).mean(1)
        if self.index.shape[1] == 1:
            return values.reshape(n, -1)[rows, self.index[:, 0]]
        return values[(rows, *self.index.T)]

    @functools.cached_property
    def _shared_index(self) -> tuple[int, ...] | None:
        """The index every example shares (one class for the whole batch), else None."""
        if len(self.index) and (self.index == self.index[0]).all():
            return tuple(int(v) for v in self.index[0])
        return None

    def check_shape(self, dims: Sequence[Any] | None) -> None:
        """Check the index against a tensor's declared dims (batch dim first), before any
        evaluation; symbolic or unknown dims are not checked (``scores`` checks them)."""
        if dims is not None and len(dims) >= 1:
            self._check_bounds(tuple(d if isinstance(d, int) and d > 0 else None for d in dims[1:]))

    def _check_bounds(self, shape: tuple[int | None, ...]) -> None:
        """Refuse an index outside ``shape`` (the tensor's non-batch dims; None: unknown)
        with our error, before numpy or torch raise their own (or, for negative numbers,
        wrap around)."""
        def where() -> str:  # built only for an error: scores() checks on every pass
            dims = ", ".join("?" if d is None else str(d) for d in shape)
            return f"tensor {self.tensor!r} of shape (N, {dims})"

        if self.kind == "channel":
            top = shape[0] if shape else 0
            if top is not None and ((self.index < 0) | (self.index >= top)).any():
                raise InputValidationError(
                    f"target Channel {np.unique(self.index).tolist()} out of range: {where()} "
                    f"has channels 0..{top - 1}"
                )
            return
        known = None not in shape
        size = int(np.prod(shape, dtype=np.int64)) if known else None
        if self.index.shape[1] == 1:
            if size is not None and ((self.index < 0) | (self.index >= size)).any():
                raise InputValidationError(
                    f"target index {np.unique(self.index).tolist()} out of range: {where()} has "
                    f"{size} units per example (flattened index 0..{size - 1})"
                )
            return
        k = self.index.shape[1]
        bounds = np.asarray([np.iinfo(np.int64).max if d is None else d for d in shape], dtype=np.int64)
        if k != len(shape) or ((self.index < 0) | (self.index >= bounds)).any():
            flat = f"an int 0..{size - 1}" if size is not None else "an int"
            ranges = ", ".join("0..?" if d is None else f"0..{d - 1}" for d in shape)
            raise InputValidationError(
                f"target index {tuple(self.index[0].tolist())} out of range: {where()} takes {flat} "
                f"or a tuple of {len(shape)} indices in ({ranges})"
            )

    def take(self, rows: np.ndarray | slice) -> Objective:
        """The objective for a subset (or repetition) of the examples."""
        return Objective(self.tensor, self.kind, self.index[rows])

    def repeat(self, times: int) -> Objective:
        """Each example's target repeated ``times`` times consecutively."""
        return Objective(self.tensor, self.kind, np.repeat(self.index, times, axis=0))


def resolve_target(
    target: TargetLike,
    n_examples: int,
    output_name: str,
    output_size: int | None,
    predict: Callable[[], np.ndarray] | None = None,
) -> Objective:
    """Turn a user's ``target`` into an :class:`Objective` for ``n_examples`` examples.

    ``predict`` returns the model output for the examples; it is called only for
    ``target=None``. ``output_size`` (classes) bounds integer targets when known.
    """
    from onnxplain.core.outputs import is_output_target

    if is_output_target(target):
        raise InputValidationError(
            f"target {target!r} is an output target, compiled into the model's graph: pass it to a "
            "method built on a Model (not on a Backend), or use Model.with_targets"
        )
    if isinstance(target, Neuron):
        idx = target.index
        if isinstance(idx, (int, np.integer)):
            if idx < 0:
                raise InputValidationError(f"Neuron index must be >= 0, got {idx}")
            index = np.full((n_examples, 1), int(idx), dtype=np.int64)
        else:
            # no wrap-around (unlike Captum's neuron_selector): negative indices are refused,
            # as for an int index and for Channel, on every backend
            if isinstance(idx, np.ndarray) and idx.ndim == 1:
                idx = tuple(idx.tolist())
            parts = tuple(idx) if isinstance(idx, (tuple, list)) else None
            if not parts or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in parts
            ):
                raise InputValidationError(
                    f"Neuron index must be an int or a non-empty tuple of ints, got {idx!r}"
                )
            if any(i < 0 for i in parts):
                raise InputValidationError(f"Neuron index entries must be >= 0 (no wrap-around), got {idx!r}")
            index = np.tile(np.asarray(parts, dtype=np.int64)[None, :], (n_examples, 1))
        return Objective(target.layer, "index", index)
    if isinstance(target, Channel):
        if target.channel < 0:
            raise InputValidationError(f"Channel must be >= 0, got {target.channel}")
        return Objective(target.layer, "channel", np.full((n_examples, 1), target.channel))
    if target is None:
        if predict is None:
            raise InputValidationError("target=None needs a forward pass to find the class")
        out = np.asarray(predict())
        classes = out.reshape(out.shape[0], -1).argmax(1)
        return Objective(output_name, "index", classes.astype(np.int64)[:, None])
    if isinstance(target, (bool, np.bool_)):
        raise InputValidationError("target must be an int, a list of ints, None, Neuron or Channel")
    if isinstance(target, (int, np.integer)):
        classes = np.full(n_examples, int(target), dtype=np.int64)
    else:
        try:
            classes = np.asarray(target)
        except Exception as exc:  # pragma: no cover - exotic sequences
            raise InputValidationError(f"cannot read target {target!r}: {exc}") from exc
        if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
            raise InputValidationError(
                "target must be an int, one int per example, None (the predicted class), "
                f"Neuron or Channel; got {target!r}"
            )
        if len(classes) != n_examples:
            raise InputValidationError(
                f"target lists {len(classes)} classes but there are {n_examples} examples"
            )
        classes = classes.astype(np.int64)
    if (classes < 0).any() or (output_size is not None and (classes >= output_size).any()):
        bound = f"0..{output_size - 1}" if output_size is not None else ">= 0"
        raise InputValidationError(
            f"target class {classes.tolist()} out of range: the output has classes {bound}"
        )
    return Objective(output_name, "index", classes[:, None])
