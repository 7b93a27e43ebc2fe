"""The backend interface: registry, capabilities, intermediate tensors, rule hooks."""

import numpy as np
import pytest
import torch
from helpers import unconvertible_cnn

import onnxplain as ox
from onnxplain.backends import INPUT, Backend, Capability


def test_auto_backend_is_onnxruntime_for_forward_and_torch_for_gradients(small_model):
    assert small_model.backend_for(frozenset({Capability.FORWARD})).name == "onnxruntime"
    assert small_model.backend_for(frozenset({Capability.GRADIENTS})).name == "torch"


def test_backends_are_built_once(small_model):
    assert small_model.backend("onnxruntime") is small_model.backend("onnxruntime")
    assert small_model.backend("torch") is small_model.backend("torch")


def test_asking_a_forward_backend_for_gradients_is_a_clear_error(small_model):
    with pytest.raises(ox.BackendCapabilityError, match="gradients"):
        ox.Saliency(small_model, backend="onnxruntime")


def test_unknown_backend_name_lists_the_registered_ones(small_model):
    with pytest.raises(ox.InputValidationError, match="onnxruntime"):
        ox.Occlusion(small_model, backend="tensorrt")


def test_intermediate_tensors_agree_between_backends(small_model, images):
    names = [s.name for s in small_model.layers()]
    a = small_model.backend("onnxruntime").forward(images, outputs=names)
    b = small_model.backend("torch").forward(images, outputs=names)
    for n in names:
        np.testing.assert_allclose(a[n], b[n], atol=1e-5)


def test_onnxruntime_reports_what_really_runs(small_model):
    be = small_model.backend("onnxruntime")
    assert be.providers[-1] == "CPUExecutionProvider"
    assert be.device in ("cpu", "cuda")


def test_max_batch_size_splits_forward_passes(small_model, images):
    be = small_model.backend("onnxruntime", max_batch_size=1)
    np.testing.assert_allclose(be.predict(images), small_model.predict(images), atol=1e-6)


def test_gradient_with_respect_to_an_intermediate_tensor(small_model, small_torch, images):
    layer = small_model.find_layer().name
    objective = ox.core.resolve_target(1, 2, small_model.output_name, 5)
    res = small_model.backend("torch").gradients(images, objective, wrt=[INPUT, layer])
    acts = {}
    handle = small_torch.relu2.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    x = torch.from_numpy(images).requires_grad_()
    out = small_torch(x)[:, 1].sum()
    g_act, g_in = torch.autograd.grad(out, [acts["a"], x])
    handle.remove()
    np.testing.assert_allclose(res.gradients[layer], g_act.numpy(), atol=1e-6)
    np.testing.assert_allclose(res.gradients[INPUT], g_in.numpy(), atol=1e-6)
    np.testing.assert_allclose(res.activations[layer], acts["a"].detach().numpy(), atol=1e-5)


def test_node_rule_replaces_the_backward_of_one_node_and_is_removed(small_model, images):
    be = small_model.backend("torch")
    relus = [n.name for n in small_model.ir.graph if n.op_type == "Relu"]
    objective = ox.core.resolve_target(0, 2, small_model.output_name, 5)
    plain = be.gradients(images, objective).gradients[INPUT]
    seen = []

    def guided(ctx):  # guided backprop: pass only positive gradients through positive inputs
        seen.append(ctx.op_type)
        return (ctx.grad_input[0].clamp(min=0),)

    guided_grad = be.gradients(images, objective, rules={r: guided for r in relus}).gradients[INPUT]
    assert seen == ["Relu"] * len(relus)  # each hooked node once per backward pass
    assert not np.allclose(plain, guided_grad)
    with pytest.raises(RuntimeError):
        with be.node_rules({relus[0]: guided}):
            raise RuntimeError("interrupted")
    # every hook is gone, even after the exception
    np.testing.assert_array_equal(be.gradients(images, objective).gradients[INPUT], plain)
    assert all(not m._forward_hooks and not m._backward_hooks for m in be.module.modules())


def test_unconvertible_model_still_runs_occlusion_and_names_the_operator():
    model = ox.load(unconvertible_cnn())
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    occ = ox.Occlusion(model).attribute(x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=0)
    assert occ.shape == x.shape and np.abs(occ).sum() > 0
    with pytest.raises(ox.UnsupportedOperatorError, match="Shrink") as info:
        ox.Saliency(model).attribute(x, target=0)
    assert info.value.operators == ["Shrink-9"]


class ConstantBackend(Backend):
    name = "constant"
    capabilities = frozenset({Capability.FORWARD})

    def forward(self, x, outputs=None):
        return {self.output_name: np.tile(x.reshape(len(x), -1).mean(1, keepdims=True), (1, 5))}


def test_a_registered_backend_serves_every_forward_only_method(small_model, images):
    ox.backends.register("constant", ConstantBackend)
    try:
        assert "constant" in ox.backends.available()
        occ = ox.Occlusion(small_model, backend="constant").attribute(
            images, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), target=0)
        # the score is the mean pixel: occluding a window with 0 drops it by that window's mean share
        window_sum = images[:, :, :8, :8].sum(axis=(1, 2, 3)) / images[0].size
        np.testing.assert_allclose(occ[:, 0, 0, 0], window_sum, rtol=1e-5)
        with pytest.raises(ox.BackendCapabilityError):
            ox.Saliency(small_model, backend="constant")
    finally:
        ox.backends.unregister("constant")


@pytest.mark.parametrize("fixed", [1, 2])
def test_fixed_batch_exports_run_any_number_of_examples_on_both_backends(small_torch, small_model, fixed):
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    model = ox.adapters.torch.export(small_torch, torch.from_numpy(x[:fixed]), exporter="legacy",
                                     dynamic_batch=False)
    assert model.fixed_batch is None  # load() made the batch dynamic (tests/core/test_fixed_batch.py)
    for backend in ("onnxruntime", "torch"):
        np.testing.assert_allclose(model.backend(backend).predict(x), small_model.predict(x), atol=1e-5)
    np.testing.assert_allclose(ox.Saliency(model).attribute(x, target=[0, 1, 2]),
                               ox.Saliency(small_model).attribute(x, target=[0, 1, 2]), atol=1e-6)


def test_an_unconvertible_operator_is_a_missing_capability():
    model = ox.load(unconvertible_cnn())
    x = np.zeros((1, 3, 16, 16), np.float32)
    for method in (ox.Saliency, ox.IntegratedGradients, ox.GuidedBackprop, ox.GradCAM):
        with pytest.raises(ox.BackendCapabilityError, match="Shrink"):
            method(model).attribute(x, target=0)


def test_rules_and_extra_outputs_of_one_call_never_leak_into_the_next(small_torch, images):
    model = ox.adapters.torch.export(small_torch, torch.from_numpy(images), exporter="legacy")
    fresh = ox.adapters.torch.export(small_torch, torch.from_numpy(images), exporter="legacy")
    ox.GuidedBackprop(model).attribute(images, target=1)
    ox.GradCAM(model).attribute(images, target=1)  # adds an intermediate output to the sessions
    ox.LayerActivation(model, model.find_layer().name).attribute(images)
    np.testing.assert_array_equal(ox.Saliency(model).attribute(images, target=1),
                                  ox.Saliency(fresh).attribute(images, target=1))
    np.testing.assert_array_equal(model.predict(images), fresh.predict(images))


def test_an_exception_mid_method_leaves_the_model_usable(small_model, images):
    be = small_model.backend("torch")
    before = ox.Saliency(small_model).attribute(images, target=2)
    calls = []
    original = be._run  # each pass of the converted module

    def failing(xb):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated out of memory")
        return original(xb)

    be._run = failing
    try:
        with pytest.raises(MemoryError):
            ox.IntegratedGradients(small_model).attribute(images, target=2, n_steps=8, internal_batch_size=4)
    finally:
        del be._run
    np.testing.assert_array_equal(ox.Saliency(small_model).attribute(images, target=2), before)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_zero_pad_before_max_pooling_runs_as_written_on_both_backends(exporter):
    """ONNX Runtime's ``Pad_Fusion`` folds Pad(0) → MaxPool into MaxPool's own (−∞) pads;
    on negative maps the border windows then pool to their maximum instead of 0 (BiT's stem,
    TensorFlow's "same" padding). onnxplain's sessions disable it: both backends equal the
    module."""

    class PadPool(torch.nn.Module):
        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), 3, 2)
            return x.mean((2, 3))

    x = -torch.rand(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)) - 1  # all negative
    expected = PadPool()(x).numpy()
    model = ox.adapters.torch.export(PadPool(), x, exporter=exporter)  # checked on ONNX Runtime
    assert {"Pad", "MaxPool"} <= {node.op_type for node in model.ir.graph}
    for backend in ("onnxruntime", "torch"):
        got = model.backend(backend).forward(x.numpy())[model.output_name]
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=backend)


def _dynamic_size_cnn() -> ox.Model:
    """The small CNN exported with dynamic batch, height and width."""
    import io
    import warnings

    from helpers import small_cnn

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_cnn(), (torch.randn(1, 3, 32, 32),), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    return ox.load(buffer.getvalue())


def test_a_conversion_of_a_model_with_dynamic_image_dims_is_verified_on_each_new_shape(monkeypatch):
    """With no static shape to check the torch conversion on when it is built, the first
    rows of each new image shape are compared with ONNX Runtime, once per shape; a
    conversion that computes something else is refused, naming the shape."""
    from onnxplain.backends.torch_backend import ConversionMismatchError

    model = _dynamic_size_cnn()
    backend = model.backend("torch")
    x = np.random.default_rng(0).standard_normal((3, 3, 24, 20)).astype(np.float32)
    calls = []
    runtime = model.backend("onnxruntime")
    original = type(runtime).predict
    monkeypatch.setattr(type(runtime), "predict", lambda self, v: calls.append(v.shape) or original(self, v))
    ox.Saliency(model).attribute(x, target=1)
    ox.Saliency(model).attribute(x, target=2)
    assert calls == [(2, 3, 24, 20)]  # the first two rows, once
    monkeypatch.undo()
    node = next(n for n in model.ir.graph if n.op_type == "Conv")
    with torch.no_grad():
        backend.node_module(node.name).weight.mul_(1.5)  # a conversion that computes something else
    other = np.random.default_rng(1).standard_normal((2, 3, 28, 28)).astype(np.float32)
    with pytest.raises(ConversionMismatchError, match=r"shape \(3, 28, 28\)"):
        ox.Saliency(model).attribute(other, target=1)


def test_a_conversion_that_fails_on_a_new_shape_is_refused_with_our_error_and_forward_methods_still_run():
    """A converted module that raises where ONNX Runtime computes (a converter's shape slip)
    is a ConversionMismatchError naming the shape, not torch's own error; ONNX Runtime's
    methods are untouched."""
    from onnxplain.backends.torch_backend import ConversionMismatchError

    model = _dynamic_size_cnn()
    backend = model.backend("torch")
    node = next(n for n in model.ir.graph if n.op_type == "Conv")
    module = backend.node_module(node.name)
    module.register_forward_pre_hook(lambda mod, args: torch.ones(2, 3) @ torch.ones(4, 5))  # raises
    x = np.random.default_rng(0).standard_normal((2, 3, 20, 28)).astype(np.float32)
    refused = r"cannot run inputs of shape \(3, 20, 28\) \(RuntimeError"
    with pytest.raises(ConversionMismatchError, match=refused):
        ox.Saliency(model).attribute(x, target=1)
    assert ox.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(3, 8, 8)).shape == x.shape


@pytest.mark.parametrize("target", [[2, 0, 1], "neuron"])
def test_the_torch_backends_path_integral_equals_the_numpy_default(small_model, images, target):
    """The torch backend keeps integrated gradients' points, gradients and sum on its device;
    the sum equals the generic one built around ``gradients`` (three examples in chunks of 4,
    so a chunk holds several steps of one example and an example's steps span chunks)."""
    from onnxplain.core.targets import resolve_target
    from onnxplain.methods.gradient.integrated_gradients import approximation

    be = small_model.backend("torch")
    x = np.concatenate([images, images[:1] * 0.5])
    base = np.full_like(x, 0.1)
    if target == "neuron":
        target = ox.Neuron(small_model.find_layer().name, (3, 2, 2))
    objective = resolve_target(target, len(x), small_model.output_name, small_model.num_classes)
    sizes, alphas = approximation("gausslegendre", 7)
    seen = []
    ours = be.path_integral(base, x, alphas, sizes, objective, 4, lambda parts: seen.extend(parts) or parts)
    ref = Backend.path_integral(be, base, x, alphas, sizes, objective, 4)
    assert ours.dtype == np.float64 and [s.stop - s.start for s in seen] == [4] * 5 + [1]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7 * np.abs(ref).max())
    assert np.abs(ref).max() > 0


@pytest.mark.parametrize("post, rules, target", [
    ("abs", False, [2, 0, 1]), ("times_input", False, "neuron"), ("gradient", True, [1, 1, 3]),
])
def test_the_torch_backends_smoothed_gradients_equal_the_numpy_default(small_model, images, post, rules,
                                                                       target):
    """The torch backend draws the noisy copies, takes their gradients and sums them on its
    device; the sums equal the generic ones built around ``gradients`` (three examples, seven
    copies in chunks of three, passes of at most four rows: a pass holds parts of two chunks'
    copies), under guided-backprop rules too, and from given noise as from drawn."""
    from onnxplain.core.noise import NoisyCopies
    from onnxplain.core.targets import resolve_target
    from onnxplain.methods.gradient._modified import rectifier_nodes

    be = small_model.backend("torch")
    x = np.concatenate([images, images[:1] * 0.5])
    if target == "neuron":
        target = ox.Neuron(small_model.find_layer().name, (3, 2, 2))
    objective = resolve_target(target, len(x), small_model.output_name, small_model.num_classes)
    node_rules = {n: "guided" for n in rectifier_nodes(small_model)} if rules else None
    given = np.random.default_rng(2).standard_normal((7, *x.shape)).astype(np.float32) * 0.2
    for copies in (NoisyCopies(7, 0.3, seed=4), NoisyCopies(7, given=given)):
        seen: list[int] = []
        old_size, be.max_batch_size = be.max_batch_size, 4
        try:
            ours, ours_sq = be.smoothed_gradients(x, objective, copies, 3, node_rules, post, True,
                                                  lambda firsts, seen=seen: seen.extend(firsts) or firsts)
            ref, ref_sq = Backend.smoothed_gradients(be, x, objective, copies, 3, node_rules, post, True)
        finally:
            be.max_batch_size = old_size
        assert ours.dtype == ours_sq.dtype == np.float64 and seen == [0, 3, 6]
        for a, b in ((ours, ref), (ours_sq, ref_sq)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
            assert np.abs(b).max() > 0
    assert be.smoothed_gradients(x, objective, copies, 7, node_rules, post)[1] is None


def test_cuda_sessions_choose_convolution_algorithms_by_heuristics(monkeypatch):
    """ONNX Runtime's CUDA provider is asked for cuDNN's heuristic choice, as PyTorch makes it;
    its default times every algorithm at each new shape in every session, and may pick
    different ones for a model's different sessions (checked without a GPU: the provider
    list a CUDA request builds)."""
    import types

    from onnxplain.backends import onnxruntime_backend as orb

    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    fake = types.SimpleNamespace(get_available_providers=lambda: available)
    monkeypatch.setattr(orb, "_cuda_driver_present", lambda: True)
    owner = types.SimpleNamespace(_ort=fake)
    heuristic = {"cudnn_conv_algo_search": "HEURISTIC"}
    for asked, index in [("cuda", 0), ("cuda:1", 1), ("auto", 0)]:
        got = orb.OnnxRuntimeBackend._providers(owner, asked, "device")
        assert got == [("CUDAExecutionProvider", {"device_id": index, **heuristic}), "CPUExecutionProvider"]
    mine = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}), "CPUExecutionProvider"]
    assert orb.OnnxRuntimeBackend._providers(owner, mine, "providers") == mine  # an explicit list as given


def test_read_only_inputs_pass_through_the_torch_backend_without_warnings(small_model, images):
    """Arrays the user marked read-only (or numpy views of them) are copied where torch needs
    writable memory, instead of torch warning about them."""
    import warnings

    x = images.copy()
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_model.backend("torch").predict(x)
        ox.Saliency(small_model).attribute(x, target=1)
        ox.IntegratedGradients(small_model).attribute(x, target=1, n_steps=4, show_progress=False)
        ox.NoiseTunnel(ox.Saliency(small_model)).attribute(x, target=1, nt_samples=3, seed=0)
    assert not x.flags.writeable
