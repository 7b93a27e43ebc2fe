"""The counter-based Gaussian noise of onnxplain.core.noise: a draw depends on (seed, copy,
example, element) alone, and the draws are standard normal and independent by the usual
statistical checks (each a fixed draw, so no test is flaky)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from onnxplain.core import noise
from onnxplain.core.noise import NoisyCopies, standard_normal


def test_a_copy_is_the_same_whichever_range_and_block_size_draws_it(monkeypatch):
    whole = standard_normal(5, 0, 6, 3, (2, 7, 5))
    parts = torch.cat([standard_normal(5, 0, 2, 3, (2, 7, 5)), standard_normal(5, 2, 1, 3, (2, 7, 5)),
                       standard_normal(5, 3, 3, 3, (2, 7, 5))])
    assert whole.shape == (6, 3, 2, 7, 5) and whole.dtype == torch.float32
    assert torch.equal(whole, parts)
    monkeypatch.setattr(noise, "_CPU_BLOCK", 1)  # one row per block instead of all at once
    assert torch.equal(whole, standard_normal(5, 0, 6, 3, (2, 7, 5)))


def test_float64_draws_round_to_the_float32_draws():
    wide = standard_normal(2, 0, 2, 2, (3, 9, 9), dtype=torch.float64)
    assert torch.equal(wide.to(torch.float32), standard_normal(2, 0, 2, 2, (3, 9, 9)))


def test_every_word_of_the_seed_and_each_copy_and_example_gets_its_own_draws():
    draws = [standard_normal(s, 0, 1, 1, (64,)) for s in (0, 1, 2**32, 2**40 + 7, 2**40 + 8)]
    for i, a in enumerate(draws):
        for b in draws[i + 1:]:
            assert not torch.allclose(a, b)
    grid = standard_normal(0, 0, 3, 3, (64,)).reshape(9, 64)
    assert len({tuple(row.tolist()) for row in grid}) == 9
    assert standard_normal(0, 0, 1, 1, (3,)).shape == (1, 1, 3)  # an odd count: one draw of the last pair


def test_the_draws_are_standard_normal_and_uncorrelated():
    """64 rows of 6144 draws (393 216): moments, a Kolmogorov–Smirnov test, and correlations
    within four standard errors between neighbours, between the two normals of a Box–Muller
    pair (also of their squares: they share a radius), between rows and between seeds."""
    z = standard_normal(11, 0, 16, 4, (6, 32, 32), dtype=torch.float64).numpy().reshape(64, -1)
    other = standard_normal(12, 0, 16, 4, (6, 32, 32), dtype=torch.float64).numpy().reshape(64, -1)
    size = z.size
    assert abs(z.mean()) < 4 / np.sqrt(size)
    assert abs(z.std() - 1) < 4 * np.sqrt(0.5 / size)
    assert abs(stats.kurtosis(z.ravel())) < 4 * np.sqrt(24 / size)
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3
    limit = 4 / np.sqrt(size / 2)
    assert abs(np.corrcoef(z[:, 1:].ravel(), z[:, :-1].ravel())[0, 1]) < limit
    assert abs(np.corrcoef(z[:, 2:].ravel(), z[:, :-2].ravel())[0, 1]) < limit
    half = z.shape[1] // 2  # a Box–Muller pair: elements j and half + j
    assert abs(np.corrcoef(z[:, :half].ravel(), z[:, half:].ravel())[0, 1]) < limit
    assert abs(np.corrcoef(z[:, :half].ravel() ** 2, z[:, half:].ravel() ** 2)[0, 1]) < limit
    assert abs(np.corrcoef(z.ravel(), other.ravel())[0, 1]) < 4 / np.sqrt(size)
    rows = np.corrcoef(z)
    np.fill_diagonal(rows, 0)
    assert np.abs(rows).max() < 5 / np.sqrt(z.shape[1])


def test_noisy_copies_add_the_draws_or_the_given_noise_in_the_inputs_type():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    drawn = NoisyCopies(5, stdev=0.3, seed=9).rows(x, 1, 3)
    expected = x[None] + 0.3 * standard_normal(9, 1, 3, 2, (3, 4, 4)).numpy()
    assert isinstance(drawn, np.ndarray) and drawn.dtype == np.float32 and drawn.shape == (6, 3, 4, 4)
    np.testing.assert_allclose(drawn, expected.reshape(6, 3, 4, 4), rtol=1e-6, atol=1e-6)
    on_torch = NoisyCopies(5, stdev=0.3, seed=9).rows(torch.from_numpy(x), 1, 3)
    assert isinstance(on_torch, torch.Tensor) and np.array_equal(on_torch.numpy(), drawn)
    given = np.random.default_rng(1).standard_normal((5, *x.shape))
    rows = NoisyCopies(5, given=given).rows(x, 3, 2)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, (x[None] + given[3:5]).reshape(4, 3, 4, 4), rtol=1e-6)
    wide = NoisyCopies(2, stdev=1.0, seed=3).rows(x.astype(np.float64), 0, 2)
    assert wide.dtype == np.float64  # float64 inputs get float64 draws
    draws = standard_normal(3, 0, 2, 2, (3, 4, 4), torch.float64).numpy().reshape(4, 3, 4, 4)
    np.testing.assert_allclose(wide - np.tile(x, (2, 1, 1, 1)), draws, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_read_only_inputs_are_copied_not_written(dtype):
    x = np.zeros((1, 2, 3), dtype)
    x.setflags(write=False)
    rows = NoisyCopies(2, stdev=1.0, seed=0).rows(x, 0, 2)
    assert rows.dtype == dtype and np.all(x == 0) and np.any(rows != 0)
