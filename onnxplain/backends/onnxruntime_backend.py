"""ONNX Runtime backend: fast batched forward passes, of outputs and of any intermediate tensor."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from onnxplain._compat import ORT_DISABLED_OPTIMIZERS
from onnxplain.backends.base import Backend, Capability
from onnxplain.backends.registry import cuda_index, is_out_of_memory, physical_cores, resolve_max_batch_size
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


def _load_cuda_libraries(ort) -> None:
    """Let onnxruntime-gpu's CUDA provider find the CUDA and cuDNN libraries pip installed.

    As ONNX Runtime documents: a torch built for the same CUDA major version loads them when
    imported (torch is a dependency of ours; its import is what a session needs first); for
    another one, onnxruntime's own ``preload_dlls`` looks for them in the nvidia packages.
    """
    import torch

    info = getattr(getattr(ort, "capi", None), "build_and_package_info", None)
    ort_cuda = str(getattr(info, "cuda_version", "") or "")
    torch_cuda = str(torch.version.cuda or "")
    if ort_cuda.split(".")[0] == torch_cuda.split(".")[0] or not hasattr(ort, "preload_dlls"):
        return
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its findings
        try:
            ort.preload_dlls(msvc=False)
        except Exception as exc:  # the provider then reports what is missing itself
            logger.debug("onnxruntime.preload_dlls failed: %s", exc)


def _cuda_provider(index: int) -> tuple[str, dict]:
    """ONNX Runtime's CUDA provider on GPU ``index``, choosing cuDNN's convolution algorithms by
    its heuristics, as PyTorch does by default: the provider's own default (EXHAUSTIVE) times
    every algorithm at each new batch shape, in every session, and may pick another one per
    session, so that a model's sessions (one per set of requested tensors) can disagree in the
    last bits, and the first pass of each shape takes far longer."""
    return ("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "HEURISTIC"})


class OnnxRuntimeBackend(Backend):
    """Forward passes on ONNX Runtime.

    ``device``: ``"auto"`` (CUDA when a GPU and onnxruntime-gpu are present, else CPU),
    ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; asking for CUDA where it cannot run is an
    :class:`~onnxplain.InputValidationError`. ``providers``: an explicit onnxruntime
    provider list instead (or the older spelling of ``device``). ``num_threads``: ORT's
    intra-op threads (None: the physical cores this process may use; 0: ORT's default).
    ``max_batch_size``: rows per ``InferenceSession.run`` (``"auto"``: 32 on CPU, 256 on
    CUDA); a pass that runs out of memory is retried at half the batch, and the smaller
    size is kept. ``io_binding`` (default: on CUDA) binds inputs and outputs to the
    device, so each pass copies its batch in and the requested tensors out once.

    Sessions use the full graph optimisation level and sequential execution (a CNN's
    parallelism is inside its operators). Intermediate tensors are made graph outputs on
    demand; one session is built per set of requested tensors and reused, and the
    backend itself is cached on the :class:`~onnxplain.Model`.
    """

    name = "onnxruntime"
    capabilities = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})

    def __init__(
        self,
        model: Model,
        providers: str | Sequence[str] = "auto",
        num_threads: int | None = None,
        max_batch_size: int | str = "auto",
        device: str | None = None,
        io_binding: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        asked = device if device is not None else providers
        self._requested = self._providers(asked, "device" if device is not None else "providers")
        first = self._requested[0]
        first, options = first if isinstance(first, tuple) else (first, {})
        use_cuda = first == "CUDAExecutionProvider"
        # "cuda" as asked: "cuda", or "cuda:N" for an explicit index
        index = options.get("device_id", 0)
        self._cuda_name = asked.lower() if isinstance(asked, str) and ":" in asked else (
            f"cuda:{index}" if index else "cuda")
        if use_cuda:
            _load_cuda_libraries(ort)
        super().__init__(model, resolve_max_batch_size(max_batch_size, "cuda" if use_cuda else "cpu"))
        self.num_threads = physical_cores() if num_threads is None else int(num_threads)
        self._sessions: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()
        self.providers: list[str] = self._session(()).get_providers()
        if use_cuda and "CUDAExecutionProvider" not in self.providers:
            logger.warning("CUDA was requested but ONNX Runtime runs on %s", self.providers)
        self.io_binding = self.device.startswith("cuda") if io_binding is None else bool(io_binding)

    def _providers(self, providers: str | Sequence[str], arg: str) -> list:
        available = self._ort.get_available_providers()
        if isinstance(providers, str):
            key = providers.lower()
            if key == "auto":
                use_cuda = "CUDAExecutionProvider" in available and _cuda_driver_present()
                return ([_cuda_provider(0)] if use_cuda else []) + ["CPUExecutionProvider"]
            if key == "cpu":
                return ["CPUExecutionProvider"]
            if key.startswith("cuda"):
                index = cuda_index(key)
                if "CUDAExecutionProvider" not in available:
                    raise InputValidationError(
                        f"{arg}={providers!r} but this onnxruntime has no CUDA provider; "
                        f"install onnxruntime-gpu or use {arg}='cpu' (or 'auto')"
                    )
                if not _cuda_driver_present():
                    raise InputValidationError(
                        f"{arg}={providers!r} but no CUDA driver is installed on this machine "
                        f"(libcuda not found); use {arg}='cpu' (or 'auto')"
                    )
                return [_cuda_provider(index), "CPUExecutionProvider"]
            raise InputValidationError(
                f"{arg} must be 'auto', 'cpu', 'cuda', 'cuda:N' or a list of ORT providers, got {providers!r}"
            )
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if unknown:
            raise InputValidationError(f"providers {unknown} are not available; have {available}")
        return list(providers)

    @property
    def device(self) -> str:
        if "CUDAExecutionProvider" not in self.providers:
            return "cpu"
        return self._cuda_name

    def _session(self, extra: tuple[str, ...]):
        with self._lock:
            sess = self._sessions.get(extra)
            if sess is not None:
                return sess
            opts = self._ort.SessionOptions()
            opts.intra_op_num_threads = self.num_threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            # ORT's spinning workers slow torch in the same process by an order of magnitude.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
            # only the libraries the user named in load(custom_op_libraries=...), never others
            for lib in getattr(self.model, "custom_op_libraries", ()):
                try:
                    opts.register_custom_ops_library(lib)
                except Exception as exc:
                    raise ModelLoadError(
                        f"ONNX Runtime cannot load the custom-op library {lib!r}: {exc}"
                    ) from None
            data = self.model.serialized(extra_outputs=extra)
            try:
                sess = self._ort.InferenceSession(data, sess_options=opts, providers=self._requested,
                                                  disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
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
        start = 0
        while start < len(x):
            chunk = x[start : start + size]
            real = len(chunk)
            if fixed and real < fixed:  # pad to the fixed batch the model was exported with
                pad = np.repeat(chunk[-1:], fixed - real, axis=0)
                chunk = np.concatenate([chunk, pad])
            try:
                res = self._run(sess, names, chunk)
            except Exception as exc:
                if fixed or size == 1 or not is_out_of_memory(exc):
                    raise
                size = self.max_batch_size = max(1, size // 2)  # keep the size that fits
                logger.warning("ONNX Runtime ran out of memory; retrying with batches of %d", size)
                continue
            for n, r in zip(names, res):
                parts[n].append(r[:real])
            start += real
        return {n: (p[0] if len(p) == 1 else np.concatenate(p)) if p else np.zeros((0,))
                for n, p in parts.items()}

    def _run(self, sess, names: list[str], chunk: np.ndarray) -> list[np.ndarray]:
        if not self.io_binding:
            return sess.run(names, {self.model.input_name: chunk})
        kind, _, index = self.device.partition(":")
        binding = sess.io_binding()
        value = self._ort.OrtValue.ortvalue_from_numpy(chunk, kind, int(index or 0))
        binding.bind_ortvalue_input(self.model.input_name, value)
        for n in names:
            binding.bind_output(n, kind, int(index or 0))
        sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
