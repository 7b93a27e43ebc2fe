"""Keep numpy's BLAS threads off the cores a backend computes on.

OpenBLAS's worker threads busy-wait for a while after every call before they sleep. A
method that multiplies matrices in numpy between two forward passes (RISE's masks, the
surrogates' fits, resizing) leaves those threads spinning on the cores ONNX Runtime or
torch is about to use: on 2 cores, RISE's forward passes on mobilenet_v2 ran 40% slower
(5.6–5.9 vs 3.6–4.1 ms per row) until BLAS was held to one thread. The numpy work in the
methods is small, so one BLAS thread costs it little.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

_LOCK = threading.Lock()
_CONTROLLER: Any = None
_LIMITER: Any = None  # the limit the first call in set, restored by the last one out
_DEPTH = 0  # calls now inside, nested or from several threads: the last one out restores


def _controller() -> Any:
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


@contextlib.contextmanager
def single_threaded_blas() -> Any:
    """Within the block, the BLAS libraries loaded in this process use one thread; the
    thread counts are restored when the last block open in the process exits."""
    global _DEPTH, _LIMITER
    with _LOCK:
        _DEPTH += 1
        if _DEPTH == 1:
            controller = _controller()
            if controller:
                _LIMITER = controller.limit(limits=1, user_api="blas")
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _LIMITER is not None:
                _LIMITER.restore_original_limits()
                _LIMITER = None
