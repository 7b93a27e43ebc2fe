"""Performance settings of the built-in backends: session options, reuse, inference mode,
out-of-memory back-off (simulated on CPU), IO binding and device selection."""

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

import onnxplain as ox
from onnxplain.backends.registry import AUTO_BATCH_SIZE, is_out_of_memory, physical_cores

ORT_OOM = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
    "Conv node. Name:'/conv1/Conv' Status Message: Failed to allocate memory for requested "
    "buffer of size 411041792"
)


@pytest.fixture
def fresh_model():
    """A model with no backend built yet (the shared fixtures' backends are cached)."""
    return ox.load(ox.examples.tiny_cnn())


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((37, 3, 32, 32)).astype(np.float32)


def test_sessions_use_physical_cores_full_optimisation_and_sequential_execution(fresh_model):
    be = fresh_model.backend("onnxruntime")
    opts = be._session(()).get_session_options()
    assert be.num_threads == physical_cores() == opts.intra_op_num_threads
    assert 1 <= physical_cores() <= os.cpu_count()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert (
        fresh_model.backend("onnxruntime", num_threads=1)
        ._session(())
        .get_session_options()
        .intra_op_num_threads
        == 1
    )


def test_two_methods_on_one_model_build_one_session_and_one_torch_module(fresh_model, x, monkeypatch):
    import onnx2torch

    sessions, modules = [], []
    real_session, real_convert = ort.InferenceSession, onnx2torch.convert

    def session(*args, **kwargs):
        sessions.append(1)
        return real_session(*args, **kwargs)

    def convert(*args, **kwargs):
        modules.append(1)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(onnx2torch, "convert", convert)
    for _ in range(2):
        ox.Occlusion(fresh_model).attribute(
            x[:1], target=0, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), show_progress=False
        )
        ox.RISE(fresh_model).attribute(x[:1], target=0, n_masks=8, show_progress=False)
        ox.Saliency(fresh_model).attribute(x[:1], target=0)
        ox.IntegratedGradients(fresh_model).attribute(x[:1], target=0, n_steps=4, show_progress=False)
    # the torch backend's conversion check reuses the ONNX Runtime backend's session
    assert (len(sessions), len(modules)) == (1, 1)


def test_torch_forward_and_activations_run_in_inference_mode(fresh_model, x):
    be = fresh_model.backend("torch")
    be.forward(x[:2])  # the first call of an image shape also verifies the conversion
    seen = []
    handle = be.module.register_forward_hook(lambda *a: seen.append(torch.is_inference_mode_enabled()))
    try:
        be.forward(x[:2], outputs=[fresh_model.layers()[0].name, fresh_model.output_name])
    finally:
        handle.remove()
    assert seen == [True]


class _FakeOrtSession:
    """Wraps a real session; fails like ORT's arena does on batches over ``limit`` rows."""

    def __init__(self, real, limit, error=None):
        self.real, self.limit, self.sizes = real, limit, []
        self.error = error or RuntimeException(ORT_OOM)

    def run(self, names, feeds):
        (batch,) = feeds.values()
        self.sizes.append(len(batch))
        if len(batch) > self.limit:
            raise self.error
        return self.real.run(names, feeds)


def test_onnxruntime_halves_the_batch_on_out_of_memory_and_keeps_the_size(fresh_model, x):
    expected = fresh_model.predict(x)
    be = fresh_model.backend("onnxruntime", max_batch_size=32, num_threads=1)
    fake = _FakeOrtSession(be._session(()), limit=8)
    be._sessions[()] = fake
    np.testing.assert_array_equal(be.predict(x), expected)
    assert fake.sizes == [32, 16, 8, 8, 8, 8, 5]
    assert be.max_batch_size == 8
    fake.sizes.clear()
    be.predict(x[:9])
    assert fake.sizes == [8, 1]  # the next call starts from the size that fit


def test_other_onnxruntime_errors_are_not_retried(fresh_model, x):
    be = fresh_model.backend("onnxruntime", max_batch_size=32, num_threads=1)
    fake = _FakeOrtSession(be._session(()), limit=8, error=RuntimeException("Invalid rank for input"))
    be._sessions[()] = fake
    with pytest.raises(RuntimeException, match="Invalid rank"):
        be.predict(x)
    assert fake.sizes == [32] and be.max_batch_size == 32


def test_out_of_memory_at_batch_one_is_raised(fresh_model, x):
    be = fresh_model.backend("onnxruntime", max_batch_size=2, num_threads=1)
    be._sessions[()] = _FakeOrtSession(be._session(()), limit=0)
    with pytest.raises(RuntimeException, match="Failed to allocate"):
        be.predict(x[:3])


def test_torch_halves_the_batch_on_cuda_out_of_memory(fresh_model, x):
    be = fresh_model.backend("torch", max_batch_size=32, verify=False)
    real, sizes = be.module, []

    class Fake(torch.nn.Module):
        def forward(self, xb):
            sizes.append(len(xb))
            if len(xb) > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(xb)

    layer = fresh_model.layers()[0].name
    expected = fresh_model.backend("onnxruntime").forward(x, outputs=[layer, fresh_model.output_name])
    be.module = Fake()
    try:
        got = be.forward(x, outputs=[layer, fresh_model.output_name])
    finally:
        be.module = real
    assert sizes[:4] == [32, 16, 8, 4] and be.max_batch_size == 4
    for name, value in expected.items():  # activations too: captured from the retried passes only
        np.testing.assert_allclose(got[name], value, atol=1e-5)


def test_io_binding_gives_the_same_outputs_as_run(fresh_model, x):
    layer = fresh_model.layers()[0].name
    plain = fresh_model.backend("onnxruntime").forward(x, outputs=[layer, fresh_model.output_name])
    bound_be = fresh_model.backend("onnxruntime", io_binding=True)
    assert bound_be.io_binding and not fresh_model.backend("onnxruntime").io_binding  # off on CPU
    bound = bound_be.forward(x, outputs=[layer, fresh_model.output_name])
    for name in plain:
        np.testing.assert_array_equal(bound[name], plain[name])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(fresh_model, device):
    with pytest.raises(ox.InputValidationError, match=r"device='cuda.*use device='cpu'"):
        fresh_model.backend("torch", device=device)
    with pytest.raises(ox.InputValidationError, match=r"device='cuda.*use device='cpu'"):
        fresh_model.backend("onnxruntime", device=device)
    with pytest.raises(ox.InputValidationError, match="device="):  # through a method's options
        ox.Occlusion(fresh_model, device=device)


def test_device_auto_and_batch_auto_on_this_machine(fresh_model):
    want = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ("onnxruntime", "torch"):
        be = fresh_model.backend(name, device="auto")
        assert be.device.startswith(want)
        assert be.max_batch_size == AUTO_BATCH_SIZE[want]
    with pytest.raises(ox.InputValidationError, match="'auto', 'cpu', 'cuda'"):
        fresh_model.backend("onnxruntime", device="gpu")
    with pytest.raises(ox.InputValidationError, match="max_batch_size"):
        fresh_model.backend("onnxruntime", max_batch_size="big")


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeException(ORT_OOM))
    assert is_out_of_memory(RuntimeException("CUDA failure 2: out of memory ; GPU=0"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeException("Invalid rank for input: x"))
    assert not is_out_of_memory(ValueError("shape mismatch"))


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_is_held_to_one_thread_during_a_cpu_method_call_and_restored(fresh_model, x):
    before = _blas_threads()
    assert before, "numpy's BLAS should be visible to threadpoolctl"
    seen = []
    occlusion = ox.Occlusion(fresh_model, backend="onnxruntime")
    forward = occlusion.backend.forward

    def spy(batch, outputs=None):
        seen.append(_blas_threads())
        return forward(batch, outputs)

    occlusion.backend.forward = spy
    occlusion.attribute(x, target=0, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8))
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert _blas_threads() == before
    # a backend can opt out
    seen.clear()
    occlusion.backend.keep_blas_threads = True
    occlusion.attribute(x, target=0, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8))
    assert all(threads == before for threads in seen)
