"""Targets: what an explanation explains, defined once for every method.

A target is one of

- ``None``: the class the model predicts for each example (argmax of the output);
- an ``int``: the same output index for every example;
- a sequence of ints (or a 1-D integer array): one output index per example;
- ``Neuron(layer, index)``: one unit of an internal tensor (``index`` is an int into the
  flattened non-batch dims, or a tuple such as ``(channel, row, col)``);
- ``Channel(layer, channel)``: the mean activation of one channel of a feature map.

``resolve_target`` turns any of them into an :class:`Objective`, the single object every
backend understands: which tensor, and which scalar per example to take from it.
"""

from __future__ import annotations

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
        rows = np.arange(n)
        if self.kind == "channel":
            selected = values[rows, self.index[:, 0]]
            return selected.reshape(n, -1).mean(1)
        if self.index.shape[1] == 1:
            return values.reshape(n, -1)[rows, self.index[:, 0]]
        return values[(rows, *self.index.T)]

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
    if isinstance(target, Neuron):
        idx = target.index
        if isinstance(idx, (int, np.integer)):
            if idx < 0:
                raise InputValidationError(f"Neuron index must be >= 0, got {idx}")
            index = np.full((n_examples, 1), int(idx), dtype=np.int64)
        else:
            index = np.tile(np.asarray(idx, dtype=np.int64)[None, :], (n_examples, 1))
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
