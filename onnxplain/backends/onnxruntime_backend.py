"""ONNX Runtime backend: fast batched forward passes, of outputs and of any intermediate tensor."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from onnxplain.backends.base import Backend, Capability, batches
from onnxplain.core.errors import InputValidationError, ModelLoadError

if TYPE_CHECKING:
    from onnxplain.core.model import Model

logger = logging.getLogger(__name__)


def _cuda_driver_present() -> bool:
    # onnxruntime-gpu lists CUDA as available even without a GPU and then falls back to
    # CPU with a burst of errors; ask the driver first.
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            continue
    return False


class OnnxRuntimeBackend(Backend):
    """Forward passes on ONNX Runtime.

    ``providers``: ``"auto"`` (CUDA when a GPU and onnxruntime-gpu are present, else CPU),
    ``"cpu"``, ``"cuda"`` or an explicit onnxruntime provider list. ``num_threads``: ORT's
    intra-op threads (0 = ORT's default). Intermediate tensors are made graph outputs on
    demand; one session is built per set of requested tensors and reused.
    """

    name = "onnxruntime"
    capabilities = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})

    def __init__(
        self,
        model: Model,
        providers: str | Sequence[str] = "auto",
        num_threads: int = 0,
        max_batch_size: int = 32,
    ) -> None:
        super().__init__(model, max_batch_size)
        import onnxruntime as ort

        self._ort = ort
        self._requested = self._providers(providers)
        self.num_threads = int(num_threads)
        self._sessions: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()
        self.providers: list[str] = self._session(()).get_providers()
        if "CUDAExecutionProvider" in self._requested and "CUDAExecutionProvider" not in self.providers:
            logger.warning("CUDA was requested but ONNX Runtime runs on %s", self.providers)

    def _providers(self, providers: str | Sequence[str]) -> list[str]:
        available = self._ort.get_available_providers()
        if isinstance(providers, str):
            key = providers.lower()
            if key == "auto":
                use_cuda = "CUDAExecutionProvider" in available and _cuda_driver_present()
                return (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
            if key == "cpu":
                return ["CPUExecutionProvider"]
            if key == "cuda":
                if "CUDAExecutionProvider" not in available:
                    raise InputValidationError(
                        "providers='cuda' but this onnxruntime has no CUDA provider; "
                        "install onnxruntime-gpu or use providers='cpu'"
                    )
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
            raise InputValidationError(
                f"providers must be 'auto', 'cpu', 'cuda' or a list of ORT providers, got {providers!r}"
            )
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise InputValidationError(f"providers {unknown} are not available; have {available}")
        return list(providers)

    @property
    def device(self) -> str:
        return "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"

    def _session(self, extra: tuple[str, ...]):
        with self._lock:
            sess = self._sessions.get(extra)
            if sess is not None:
                return sess
            opts = self._ort.SessionOptions()
            opts.intra_op_num_threads = self.num_threads
            opts.log_severity_level = 3
            # ORT's spinning workers slow torch in the same process by an order of magnitude.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
            data = self.model.serialized(extra_outputs=extra)
            try:
                sess = self._ort.InferenceSession(data, sess_options=opts, providers=self._requested)
            except Exception as exc:
                raise ModelLoadError(f"ONNX Runtime cannot run this model: {exc}") from exc
            self._sessions[extra] = sess
            return sess

    def forward(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        model = self.model
        names = list(outputs) if outputs is not None else [model.output_name]
        extra = tuple(sorted(set(names) - set(model.output_names)))
        if extra:
            model.check_tensors(extra)
        sess = self._session(extra)
        x = np.ascontiguousarray(x, dtype=model.input_dtype)
        fixed = model.fixed_batch
        size = fixed or self.max_batch_size
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for sl in batches(len(x), size):
            chunk = x[sl]
            real = len(chunk)
            if fixed and real < fixed:  # pad to the fixed batch the model was exported with
                pad = np.repeat(chunk[-1:], fixed - real, axis=0)
                chunk = np.concatenate([chunk, pad])
            res = sess.run(names, {model.input_name: chunk})
            for n, r in zip(names, res):
                parts[n].append(r[:real])
        return {n: np.concatenate(p) if p else np.zeros((0,)) for n, p in parts.items()}
