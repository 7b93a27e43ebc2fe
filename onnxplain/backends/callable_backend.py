"""A forward-only backend around any function ``f(batch) -> outputs``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from onnxplain.backends.base import Backend, Capability, batches
from onnxplain.core.errors import InputValidationError

if TYPE_CHECKING:
    from onnxplain.core.model import Model


class CallableBackend(Backend):
    """Wrap ``fn(batch: np.ndarray) -> np.ndarray`` as a forward-only backend.

    Anything that maps a batch to scores can be explained by every forward-only method:
    a model behind HTTP, a TensorRT engine, ``sklearn``'s ``predict_proba``. ``model`` is
    optional: without it, inputs are validated only as float arrays.

    >>> import numpy as np, onnxplain as ox
    >>> be = ox.backends.CallableBackend(lambda b: b.reshape(len(b), -1)[:, :2])
    >>> be.predict(np.ones((3, 1, 2, 2), np.float32)).shape
    (3, 2)
    """

    name = "callable"
    capabilities = frozenset({Capability.FORWARD})

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        model: Model | None = None,
        max_batch_size: int = 32,
        output_name: str = "output",
        input_name: str = "input",
    ) -> None:
        super().__init__(model, max_batch_size)
        if not callable(fn):
            raise InputValidationError(f"CallableBackend needs a function, got {type(fn).__name__}")
        self.fn = fn
        self._output_name = model.output_name if model is not None else output_name
        self._input_name = model.input_name if model is not None else input_name

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def output_name(self) -> str:
        return self._output_name

    def forward(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if outputs is not None and list(outputs) != [self.output_name]:
            raise InputValidationError(
                f"a CallableBackend returns only {self.output_name!r}, not {list(outputs)}"
            )
        parts = []
        for sl in batches(len(x), self.max_batch_size):
            out = np.asarray(self.fn(x[sl]))
            if out.shape[0] != sl.stop - sl.start:
                raise InputValidationError(
                    f"the wrapped function returned {out.shape[0]} rows for a batch of "
                    f"{sl.stop - sl.start}; it must return one row per example"
                )
            parts.append(out)
        return {self.output_name: np.concatenate(parts)}
