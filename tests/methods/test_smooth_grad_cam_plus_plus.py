"""Smooth Grad-CAM++ against torch-cam's ``SmoothGradCAMpp`` and against its formula computed
with torch's autograd, on the same network, layer, targets and noise.

The layer is a mid-network ReLU, so its gradient depends on the input (after a global
pooling and a linear layer it would not, and the noise would change nothing). torch-cam draws its noise
from ``torch.distributions``; the test hands it ours. torch-cam departs from the formula in
three ways, each harmless in one setting, so it is compared there: it weights by the last
noisy copy's gradient where the formula has the mean (one noisy copy), multiplies its
weights with the last noisy copy's activations where the formula (and its own α) has the
noise-free ones (its weights are compared, on the noise-free activations), and reads α's
Σ_ab A_ab ∂³Y/∂A_ij³ as Σ_ab A_ab ∂³Y/∂A_ab³ (a network whose gradient is the same at
every position of a map). The mean over three copies, on a layer whose gradient varies by
position, is checked against the formula computed by hand. Tolerance: 1e-5 of the
map's maximum (float32 gradients).
"""

import numpy as np
import pytest
import torch
from torch import nn

import onnxplain as ox

TARGETS = [3, 1]


class _Net(nn.Module):
    """relu2 is explained. ``mlp_head``: relu2 → global average pooling → Linear → ReLU →
    Linear, where the gradient is the same at every position of a map (but depends on the
    input); else relu2 → Conv → ReLU → pooling → Linear, where it varies by position."""

    def __init__(self, mlp_head: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlp_head = mlp_head
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        self.hidden, self.fc = nn.Linear(16, 16), nn.Linear(16, 5)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        if self.mlp_head:
            return self.fc(torch.relu(self.hidden(a.mean((2, 3)))))
        return self.fc(self.relu3(self.conv3(a)).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def _setup(mlp_head: bool):
    net = _Net(mlp_head).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    model = ox.adapters.torch.export(net, torch.from_numpy(x))
    relus = [node.outputs[0].name for node in model.ir.graph if node.op_type == "Relu"]
    return net, model, relus[1], x


@pytest.fixture(scope="module")
def setup():
    return _setup(mlp_head=False)


def _activations(net: _Net, x: np.ndarray) -> torch.Tensor:
    """The layer explained: relu2's output."""
    return net.relu2(net.conv2(net.relu1(net.conv1(torch.from_numpy(x)))))


def _noise(samples: int, x: np.ndarray) -> np.ndarray:
    return (np.random.default_rng(5).standard_normal((samples, *x.shape)) * 0.3).astype(np.float32)


def _ours(model, layer, x, noise):
    method = ox.SmoothGradCAMPlusPlus(model, layer=layer)
    return method.attribute(x, target=TARGETS, nt_samples=len(noise), noise=noise, upsample=False)


def test_one_noisy_copy_equals_torch_cam():
    """torch-cam sums A·D³ over positions in α's denominator where Grad-CAM++ multiplies the
    sum of A by D³ at the position (eq. 19, and torch-cam's own docstring); the two agree
    where the gradient is the same at every position, as after this network's pooled head."""
    from torchcam.methods import SmoothGradCAMpp

    net, model, layer, x = _setup(mlp_head=True)
    noise = _noise(1, x)

    class _Given:  # torch-cam's noise distribution, replaced by our draws
        def __init__(self, draws):
            self.draws = iter(draws)

        def sample(self, size):
            return torch.from_numpy(next(self.draws)).reshape(size)

    with torch.no_grad():
        clean = _activations(net, x)
    with SmoothGradCAMpp(net, target_layer="relu2", num_samples=1, input_shape=(3, 16, 16)) as extractor:
        extractor._distrib = _Given(noise)
        net(torch.from_numpy(x))
        # without the 1e-8 it adds to α's denominator: 2·D² is of order 1e-10 on this net
        weights = extractor._get_weights(TARGETS, eps=0.0)[0].detach().double().numpy()
    # its weights on the noise-free activations (its own map multiplies the last noisy copy's)
    reference = np.maximum(np.einsum("nk,nkhw->nhw", weights, clean.double().numpy()), 0)
    ours = _ours(model, layer, x, noise)
    assert reference.max() > 0
    assert np.abs(ours - reference).max() <= 1e-5 * reference.max()


def test_three_noisy_copies_average_the_derivatives(setup):
    net, model, layer, x = setup
    noise = _noise(3, x)
    with torch.no_grad():
        clean = _activations(net, x).double().numpy()
    derivatives = []
    for eps in noise:
        a = _activations(net, x + eps)
        out = net.head(a)
        score = out[torch.arange(2), torch.tensor(TARGETS)].sum()
        derivatives.append(torch.autograd.grad(score, a)[0].double().numpy())
    g = np.stack(derivatives)
    d1, d2, d3 = g.mean(0), (g**2).mean(0), (g**3).mean(0)
    denominator = 2 * d2 + clean.sum((2, 3), keepdims=True) * d3
    alpha = np.where(denominator != 0, d2 / np.where(denominator != 0, denominator, 1), 0)
    weights = (alpha * np.maximum(d1, 0)).sum((2, 3))
    expected = np.maximum(np.einsum("nk,nkhw->nhw", weights, clean), 0)
    ours = _ours(model, layer, x, noise)
    assert expected.max() > 0
    assert np.abs(ours - expected).max() <= 1e-5 * expected.max()


def test_without_noise_it_is_grad_cam_plus_plus_on_the_raw_score(setup):
    _, model, layer, x = setup
    method = ox.SmoothGradCAMPlusPlus(model, layer=layer)
    smooth = method.attribute(x, target=TARGETS, nt_samples=2, stdevs=0.0)
    plain = ox.GradCAMPlusPlus(model, layer=layer, exponential=False).attribute(x, target=TARGETS)
    np.testing.assert_allclose(smooth, plain, rtol=1e-5, atol=1e-6 * plain.max())


def test_the_noise_is_seeded_and_checked(setup):
    _, model, layer, x = setup
    method = ox.SmoothGradCAMPlusPlus(model, layer=layer)
    first, again = (method.attribute(x, target=TARGETS, nt_samples=3, seed=7) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ox.InputValidationError, match="noise must have shape"):
        method.attribute(x, target=TARGETS, nt_samples=3, noise=_noise(2, x))
    with pytest.raises(ox.InputValidationError, match="nt_samples"):
        method.attribute(x, target=TARGETS, nt_samples=0)
