"""Extremal perturbation against TorchRay's definitions, by hand, and on a trained CNN.

TorchRay is not a dependency, so its definitions (``extremal_perturbation``,
``MaskGenerator``, ``Perturbation``, ``imsmooth``) are restated below in torch, written
from their documented formulas; torch's autograd then gives the reference gradients.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from perturbation_models import SQUARE, square_model, torch_threads

import onnxplain as ox
import onnxplain.infill as infill
from onnxplain.methods.perturbation import ExtremalPerturbation
from onnxplain.methods.perturbation.extremal_perturbation import (
    BlurPyramid,
    SmoothMask,
    area_loss,
    area_reference,
)

# -- TorchRay's definitions, restated in torch ---------------------------------------------


def ref_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """imsmooth: separable Gaussian, |i| ≤ ⌈4σ⌉, zero padding."""
    width = math.ceil(4 * sigma)
    i = torch.arange(-width, width + 1, dtype=torch.float32)
    k = torch.exp(-(i / (math.sqrt(2) * sigma + 1.19209290e-07)) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, -1, -1, -1), padding=(width, 0), groups=c)
    return F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, -1, -1, -1), padding=(0, width), groups=c)


def ref_pyramid(x: torch.Tensor, levels: int, max_blur: float) -> torch.Tensor:
    return torch.cat([ref_blur(x, float((1 - s) * max_blur)) for s in torch.linspace(0, 1, levels)])


def ref_apply(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Read the pyramid at level mask·(L−1), linearly interpolated; mask (K, 1, H, W)."""
    levels = len(pyramid)
    w = mask.reshape(len(mask), 1, *mask.shape[1:]) * (levels - 1)
    k = w.floor()
    w = w - k
    k = k.long()
    y = pyramid[None].expand(len(mask), *pyramid.shape)
    k = k.expand(len(mask), 1, *y.shape[2:])
    y0 = torch.gather(y, 1, k)
    y1 = torch.gather(y, 1, torch.clamp(k + 1, max=levels - 1))
    return ((1 - w) * y0 + w * y1).squeeze(1)


class RefMaskGenerator:
    def __init__(self, shape, step, sigma):
        self.shape, self.step, self.sigma = shape, step, sigma
        self.margin = sigma
        self.padding = 1 + math.ceil((self.margin + sigma) / step)
        self.radius = 1 + math.ceil(sigma / step)
        self.shape_in = [math.ceil(z / step) for z in shape]
        self.shape_mid = [z + 2 * self.padding - (2 * self.radius + 1) + 1 for z in self.shape_in]
        self.shape_up = [step * z for z in self.shape_mid]
        self.shape_out = [z - step + 1 for z in self.shape_up]
        d = 2 * self.radius + 1
        self.weight = torch.zeros((1, d * d, *self.shape_out))
        step_inv = [torch.tensor(m, dtype=torch.float32) / torch.tensor(u, dtype=torch.float32)
                    for m, u in zip(self.shape_mid, self.shape_up)]
        uy, ux = torch.meshgrid(torch.arange(self.shape_out[0], dtype=torch.float32),
                                torch.arange(self.shape_out[1], dtype=torch.float32), indexing="ij")
        for ky in range(d):
            for kx in range(d):
                iy = torch.floor(step_inv[0] * uy) + ky - self.padding
                ix = torch.floor(step_inv[1] * ux) + kx - self.padding
                delta = torch.sqrt((uy - (self.margin + step * iy)) ** 2
                                   + (ux - (self.margin + step * ix)) ** 2)
                self.weight[0, ky * d + kx] = torch.exp(-2 * (delta / sigma - 0.5).clamp(min=0) ** 2)

    def generate(self, pmask):
        d = 2 * self.radius + 1
        mask = F.unfold(pmask, (d, d), padding=(self.padding,) * 2)
        mask = mask.reshape(len(pmask), -1, *self.shape_mid)
        mask = F.interpolate(mask, size=self.shape_up, mode="nearest")
        mask = F.pad(mask, (0, -self.step + 1, 0, -self.step + 1))
        mask = self.weight * mask
        mask = (mask * F.softmax(20 * mask, dim=1)).sum(dim=1, keepdim=True).clamp(0, 1)
        m = round(self.margin)
        return mask[:, :, m:m + self.shape[0], m:m + self.shape[1]], mask


def ref_extremal(net, x, target, areas, max_iter, step, sigma, levels, max_blur, variant="preserve",
                 jitter=True, pmask=None):
    """TorchRay's optimisation loop (simple reward), returning the cropped masks."""
    pyramid = ref_pyramid(x, levels, max_blur)
    gen = RefMaskGenerator(pyramid.shape[2:], step, sigma)
    pmask = torch.ones(len(areas), 1, *gen.shape_in) if pmask is None else pmask.clone()
    size = int(np.prod(gen.shape_out))
    reference = torch.ones(len(areas), size)
    for i, a in enumerate(areas):
        reference[i, :int(size * (1 - a))] = 0
    opt = torch.optim.SGD([pmask], lr=0.01, momentum=0.9, dampening=0.9)
    weight = 300.0
    for t in range(max_iter):
        pmask.requires_grad_(True)
        cropped, full = gen.generate(pmask)
        if variant == "preserve":
            xs = ref_apply(pyramid, cropped)
        elif variant == "delete":
            xs = ref_apply(pyramid, 1 - cropped)
        else:
            xs = torch.cat([ref_apply(pyramid, cropped), ref_apply(pyramid, 1 - cropped)])
        if jitter and t % 2 == 0:
            xs = torch.flip(xs, dims=(3,))
        y = net(xs)[:, target]
        reward = {"preserve": y, "delete": -y}.get(variant)
        if reward is None:
            reward = y[:len(areas)] - y[len(areas):]
        ranked = full.reshape(len(areas), -1).sort(dim=1, stable=True)[0]
        regul = -((ranked - reference) ** 2).mean(dim=1) * weight
        energy = (reward + regul).sum()
        opt.zero_grad()
        (-energy).backward()
        opt.step()
        pmask.data = pmask.data.clamp(0, 1)
        weight *= 1.0035
    return cropped.detach()[:, 0], -energy.detach(), pmask.grad


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):  # a tiny CNN runs faster on one thread when the cores are shared
        yield


@pytest.fixture(scope="module")
def square():
    """A CNN trained in the test to name the colour of a bright square, and three images."""
    return square_model()


# -- by hand ---------------------------------------------------------------------------------


def test_area_reference_is_zeros_then_ones():
    ref = area_reference([0.3, 0.05], 10)
    assert ref.tolist() == [[0] * 7 + [1] * 3, [0] * 9 + [1]]


def test_area_loss_by_hand():
    # mask [0.9, 0.1, 0.4, 0.6] sorted [0.1, 0.4, 0.6, 0.9] against r = [0, 0, 1, 1] (a = 0.5)
    full = np.array([[[0.9, 0.1], [0.4, 0.6]]])
    value, grad = area_loss(full, area_reference([0.5], 4), weight=2.0)
    gaps = np.array([0.1, 0.4, -0.4, -0.1])  # sorted − r
    assert value[0] == pytest.approx(2.0 * (gaps**2).mean())
    # ∂/∂m: 2·weight·gap/4 at each element's rank: 0.9→rank 3, 0.1→0, 0.4→1, 0.6→2
    np.testing.assert_allclose(grad[0], [[-0.1, 0.1], [0.4, -0.4]])


def test_blur_pyramid_by_hand():
    # a 3×3 image of ones, L = 2: level 0 is the blur with σ = 0.5 (zero padding), level 1 the image
    x = np.ones((1, 1, 3, 3), np.float32)
    pyr = BlurPyramid(x, num_levels=2, max_blur=0.5)
    k = np.exp(-2.0 * np.arange(-2, 3) ** 2)  # exp(−i²/2σ²), |i| ≤ ⌈4σ⌉ = 2
    k /= k.sum()
    centre, corner = k[1:4].sum() ** 2, k[2:].sum() ** 2  # offsets −1…1 and 0…2 fall inside
    np.testing.assert_allclose(pyr.pyramid[0, 0, 0, 1, 1], centre, rtol=1e-6)
    np.testing.assert_allclose(pyr.pyramid[0, 0, 0, 0, 0], corner, rtol=1e-6)
    np.testing.assert_allclose(pyr.pyramid[0, 1], x[0], rtol=0)
    mask = np.full((1, 3, 3), 0.25, np.float32)  # level 0.25: ¾ blur + ¼ image
    out, d = pyr.apply(np.array([0]), mask)
    np.testing.assert_allclose(out[0, 0, 0, 0], 0.75 * corner + 0.25, rtol=1e-6)
    np.testing.assert_allclose(d[0, 0, 0, 0], 1 - corner, rtol=1e-6)  # (L−1)(y₁ − y₀)


def test_smooth_mask_geometry_is_torchray_s():
    # TorchRay at 224×224 with step 7, σ = 21: a 32×32 grid, masks of 260×260 with a margin of 21
    gen = SmoothMask((224, 224), 7, 21)
    assert gen.shape_in == (32, 32) and gen.shape_out == (260, 260) and gen.crop_offset == 21
    assert gen.radius == 4 and gen.padding == 7 and gen.weight.shape == (81, 260, 260)


# -- against the restated TorchRay ------------------------------------------------------------


def test_smooth_mask_equals_torchray_mask_generator():
    rng = np.random.default_rng(0)
    ours = SmoothMask((32, 28), 3, 6)
    ref = RefMaskGenerator((32, 28), 3, 6)
    np.testing.assert_allclose(ours.weight, ref.weight[0].numpy(), rtol=0, atol=1e-6)
    params = rng.random((2, 1, *ours.shape_in)).astype(np.float32)
    p = torch.from_numpy(params).requires_grad_(True)
    cropped, full = ref.generate(p)
    np.testing.assert_allclose(ours.generate(params), full[:, 0].detach().numpy(), atol=1e-6)
    upstream = rng.standard_normal(full.shape).astype(np.float32)
    (g,) = torch.autograd.grad((full * torch.from_numpy(upstream)).sum(), p)
    np.testing.assert_allclose(ours.backward(params, upstream[:, 0]), g.numpy(), rtol=1e-4, atol=1e-5)


def test_blur_pyramid_equals_torchray_perturbation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 20, 24)).astype(np.float32)
    ours = BlurPyramid(x, 8, 5.0)
    pyramid = ref_pyramid(torch.from_numpy(x), 8, 5.0)
    np.testing.assert_allclose(ours.pyramid[0], pyramid.numpy(), atol=1e-5)
    mask = rng.random((2, 20, 24)).astype(np.float32)
    m = torch.from_numpy(mask).requires_grad_(True)
    ref = ref_apply(pyramid, m[:, None])
    out, d = ours.apply(np.array([0, 0]), mask)
    np.testing.assert_allclose(out, ref.detach().numpy(), atol=1e-5)
    upstream = rng.standard_normal(ref.shape).astype(np.float32)
    (g,) = torch.autograd.grad((ref * torch.from_numpy(upstream)).sum(), m)
    np.testing.assert_allclose((upstream * d).sum(axis=1), g.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant, flip", [("preserve", True), ("delete", False), ("dual", True)])
def test_energy_and_gradient_equal_torchray_autograd(square, variant, flip):
    net, model, x, labels, _ = square
    areas = [0.05, 0.2]
    rng = np.random.default_rng(2)
    gen = SmoothMask((32, 32), 3, 6)
    params = rng.uniform(0.2, 0.9, (2, 1, *gen.shape_in)).astype(np.float32)
    ep = ExtremalPerturbation(model)
    reference = area_reference(areas, int(np.prod(gen.shape_out)))
    perturb = BlurPyramid(x[:1], 8, 6.0)
    loss, grad, _ = ep._loss_and_gradient(params, np.array([0, 0]), ep._objective(x[:1], int(labels[0])),
                                          perturb, gen, reference, 300.0, variant, flip)
    # the same energy in torch, with TorchRay's flip on this iteration or not
    _, ref_loss, ref_grad = ref_extremal(net, torch.from_numpy(x[:1]), int(labels[0]), areas, 1, 3, 6,
                                         8, 6.0, variant, jitter=flip, pmask=torch.from_numpy(params))
    assert loss.sum() == pytest.approx(float(ref_loss), rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=1e-3, atol=1e-4 * np.abs(grad).max())


@pytest.mark.parametrize("variant", ["preserve", "delete", "dual"])
def test_extremal_perturbation_follows_torchray_for_forty_iterations(square, variant):
    # Started at m̄ = 1, many mask values tie exactly; where the rank boundary (1 − a)·|m|
    # falls inside a tie group, which tied values the ranking loss pushes up depends on the
    # sort's tie order. Both sort stably here (tied values in index order), as TorchRay's
    # unstable sort need not: with it the trajectories parted after the second iteration on
    # one CPU's trained model (1e-3), and agreed on another's.
    net, model, x, labels, _ = square
    ours = ExtremalPerturbation(model).attribute(
        x[:1], target=int(labels[0]), areas=[0.1], variant=variant, max_iter=40, step=3, sigma=6.0,
        max_blur=6.0, show_progress=False,
    )
    ref, _, _ = ref_extremal(net, torch.from_numpy(x[:1]), int(labels[0]), [0.1], 40, 3, 6.0, 8, 6.0,
                             variant=variant)
    assert ours.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(ours[0], ref.numpy(), atol=1e-5)


# -- on a CNN trained to find a square -----------------------------------------------------------


@pytest.mark.slow
def test_preserved_mask_keeps_the_score_at_the_requested_area_inside_the_square(square):
    _, model, x, labels, corners = square
    area, step, sigma = 0.1, 3, 6.0
    masks = ExtremalPerturbation(model).attribute(
        x, target=labels.tolist(), areas=area, max_iter=300, step=step, sigma=sigma, max_blur=8.0,
        show_progress=False,
    )
    assert masks.shape == (3, 32, 32)
    # TorchRay's area counts the mask's margin of σ pixels around the image
    full_size = np.prod(SmoothMask((32, 32), step, sigma).shape_out)
    np.testing.assert_allclose(masks.sum(axis=(1, 2)) / full_size, area, atol=0.025)
    kept, _ = BlurPyramid(x, 8, 8.0).apply(np.arange(3), masks)
    scores = model.predict(kept.astype(np.float32))
    original = model.predict(x)[np.arange(3), labels]
    assert (scores.argmax(1) == labels).all()
    assert (scores[np.arange(3), labels] >= 0.9 * original).all()
    for mask, (r, c) in zip(masks, corners):
        inside = np.zeros_like(mask, dtype=bool)
        inside[r:r + SQUARE, c:c + SQUARE] = True
        assert mask[inside].mean() > 0.75 and mask[~inside].mean() < 0.2


def test_deletion_and_dual_games_return_masks_for_every_area(square):
    _, model, x, labels, _ = square
    for variant in ("delete", "dual"):
        masks = ExtremalPerturbation(model).attribute(
            x[:2], target=labels[:2].tolist(), areas=[0.05, 0.2], variant=variant, max_iter=5,
            step=4, sigma=8.0, max_blur=4.0, show_progress=False,
        )
        assert masks.shape == (2, 2, 32, 32) and (masks >= 0).all() and (masks <= 1).all()


def test_infill_replaces_the_blur_pyramid(square):
    _, model, x, labels, _ = square
    kwargs = dict(target=int(labels[0]), max_iter=4, step=4, sigma=8.0, show_progress=False)
    fade = ExtremalPerturbation(model).attribute(x[:1], perturbation="fade", **kwargs)
    zeros = ExtremalPerturbation(model).attribute(x[:1], infill=infill.Zeros(), **kwargs)
    np.testing.assert_allclose(fade, zeros, atol=0)
    noisy = ExtremalPerturbation(model).attribute(x[:1], infill=infill.GaussianNoise(0.5), seed=3, **kwargs)
    again = ExtremalPerturbation(model).attribute(x[:1], infill=infill.GaussianNoise(0.5), seed=3, **kwargs)
    np.testing.assert_allclose(noisy, again, atol=0)


def test_extremal_perturbation_batches_rows_without_changing_results(square):
    _, model, x, labels, _ = square
    kwargs = dict(target=labels.tolist(), areas=[0.1, 0.2], max_iter=4, step=4, sigma=8.0,
                  show_progress=False)
    a = ExtremalPerturbation(model).attribute(x, batch_size=2, **kwargs)
    b = ExtremalPerturbation(model).attribute(x, batch_size=64, **kwargs)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_extremal_perturbation_needs_gradients(square):
    with pytest.raises(ox.BackendCapabilityError, match="gradients"):
        ExtremalPerturbation(square[1], backend="onnxruntime")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(areas=1.5), "areas"),
        (dict(areas=[]), "areas"),
        (dict(variant="both"), "variant"),
        (dict(num_levels=1), "num_levels"),
        (dict(max_iter=0), "max_iter"),
        (dict(step=0), "step"),
        (dict(baselines=0.0, infill=infill.Zeros()), "baselines"),
        (dict(infill="blur"), "infill"),
    ],
)
def test_extremal_perturbation_refuses_bad_arguments(square, kwargs, match):
    _, model, x, _, _ = square
    with pytest.raises(ox.InputValidationError, match=match):
        ExtremalPerturbation(model).attribute(x[:1], target=0, **kwargs)


def test_extremal_perturbation_explains_an_internal_channel(square):
    _, model, x, _, _ = square
    layer = model.find_layer().name
    masks = ExtremalPerturbation(model).attribute(x[:1], target=ox.Channel(layer, 2), max_iter=3, step=4,
                                                  sigma=8.0, show_progress=False)
    assert masks.shape == (1, 32, 32) and np.isfinite(masks).all()
