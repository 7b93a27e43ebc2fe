"""DGN-AM with a small generator trained in the test (a GLO-style decoder fitted to
shapes images in a few seconds) and the bundled classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnxplain as ox
from onnxplain.core.errors import InputValidationError
from onnxplain.methods.global_views import DGNAM
from onnxplain.methods.global_views.dgn_am import IMAGE

CODE = 8


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class Generator(nn.Module):
    """code (N, 8) → 3×16×16 in (−1, 1) (tanh) → nearest 4× upsampling → (N, 3, 64, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(CODE, 64), nn.ReLU(), nn.Linear(64, 3 * 16 * 16), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        small = self.net(z).view(-1, 3, 16, 1, 16, 1)
        return small.expand(-1, 3, 16, 4, 16, 4).reshape(-1, 3, 64, 64)


@pytest.fixture(scope="module")
def generator():
    """Fitted to 64 shapes images with one learned code each (generative latent optimisation)."""
    torch.manual_seed(0)
    images = torch.from_numpy(ox.examples.shapes_dataset(64, seed=11).images)
    target = nn.functional.avg_pool2d(images, 4) * 2 - 1
    net = Generator()
    codes = nn.Parameter(torch.randn(64, CODE))
    opt = torch.optim.Adam([*net.parameters(), codes], lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = ((net.net(codes).view(-1, 3, 16, 16) - target) ** 2).mean()
        loss.backward()
        opt.step()
    net.eval()
    return net, ox.adapters.torch.export(net, torch.randn(2, CODE), exporter="legacy")


@pytest.fixture(scope="module")
def shapes():
    return ox.examples.shapes_model()


@pytest.fixture(scope="module")
def dgn(shapes, generator):
    return DGNAM(shapes, generator[1], generator_range=(-1, 1))


def test_composed_graph_is_generator_then_range_map_then_classifier(shapes, generator, dgn):
    net, _ = generator
    z = np.random.default_rng(0).standard_normal((3, CODE)).astype(np.float32)
    with torch.no_grad():
        image = (net(torch.from_numpy(z)).numpy() + 1) / 2  # (−1, 1) → the card's [0, 1]
    np.testing.assert_allclose(
        dgn.composed.backend("onnxruntime").forward(z, outputs=[IMAGE])[IMAGE], image, atol=1e-6
    )
    np.testing.assert_allclose(dgn.composed.predict(z), shapes.predict(image), atol=1e-4)


def test_dgn_am_raises_the_target_score_from_random_codes(shapes, dgn):
    result = dgn.optimize(
        [0, 1, 2, 3, 4], n_starts=2, n_steps=40, lr=0.2, l2=0.1, seed=0, show_progress=False
    )
    assert result.codes.shape == (10, CODE) and result.images.shape == (10, 3, 64, 64)
    assert np.all(result.scores > result.initial_scores + 1.0), (result.initial_scores, result.scores)
    logits = shapes.predict(result.images)
    np.testing.assert_allclose(logits[np.arange(10), result.targets], result.scores, atol=1e-4)
    start = dgn.composed.predict(result.initial_codes)
    np.testing.assert_allclose(start[np.arange(10), result.targets], result.initial_scores, atol=1e-4)
    p, p0 = softmax(logits)[np.arange(10), result.targets], softmax(start)[np.arange(10), result.targets]
    assert p.mean() > p0.mean() + 0.3, (p0, p)
    assert result.images.min() >= 0 and result.images.max() <= 1  # tanh mapped into [0, 1]


def test_code_clip_and_validation(dgn):
    result = dgn.optimize(2, n_starts=2, n_steps=5, code_clip=(-0.5, 0.5), show_progress=False)
    assert np.abs(result.codes).max() <= 0.5
    with pytest.raises(InputValidationError, match="code_clip"):
        dgn.optimize(2, code_clip=(1.0, -1.0), show_progress=False)
    with pytest.raises(InputValidationError, match="Models"):
        DGNAM(dgn.classifier, "generator.onnx")
