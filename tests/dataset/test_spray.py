"""SpRAy: spectral clustering of heat maps finds a planted Clever-Hans shortcut."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain as ox
from onnxplain.data import shapes
from onnxplain.dataset import explain_dataset, spray
from onnxplain.dataset.spray import downsize

MAGENTA = np.array([1.0, 0.0, 1.0], np.float32)[:, None, None]  # the watermark: a 5×5 patch at (1..5, 1..5)


def planted(n: int, seed: int, fraction: float = 1.0, c: int = 0):
    """32×32 shapes; class ``c`` ("circle") carries the watermark (a random ``fraction`` of it)."""
    batch = shapes.generate(n, seed=seed, size=32, clutter=False)
    marked = (batch.labels == c) & (np.random.default_rng(seed + 100).random(n) < fraction)
    x = batch.images.copy()
    x[np.ix_(marked, range(3), range(1, 6), range(1, 6))] = np.broadcast_to(MAGENTA, (3, 5, 5))
    return x, batch.labels, marked


def test_downsize_averages_areas_and_normalises_each_map():
    maps = np.arange(2 * 4 * 6, dtype=np.float64).reshape(2, 4, 6)
    small = downsize(maps, (2, 3))
    blocks = maps.reshape(2, 2, 2, 3, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(small, blocks / blocks.max(axis=(1, 2), keepdims=True))
    odd = downsize(np.ones((1, 3, 3, 5)), (2, 2))  # channels summed, cells split between outputs
    np.testing.assert_allclose(odd, np.ones((1, 2, 2)))


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # sklearn's note on 3 separate groups
def test_spray_finds_planted_groups_like_sklearn_spectral_clustering():
    """Three groups of maps with a hot spot each, plus noise: the eigengap finds 3, and the
    partition equals scikit-learn's SpectralClustering on the same k-NN graph (ARI = 1)."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    maps, truth = [], []
    for group, (r, c) in enumerate([(2, 2), (10, 12), (3, 11)]):
        for _ in range(25):
            m = 0.2 * rng.random((16, 16))
            m[r : r + 3, c : c + 3] += 1.0
            maps.append(m)
            truth.append(group)
    maps, truth = np.stack(maps), np.array(truth)
    result = spray(maps, size=8, n_neighbors=8)
    assert result.n_clusters == 3
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.eigenvalues[0] == pytest.approx(0, abs=1e-9) and np.argmax(result.eigengap) == 2
    assert result.sizes().tolist() == [25, 25, 25] and result.prototypes.shape == (3, 8, 8)
    x = result.maps.reshape(75, -1)
    reference = sklearn_cluster.SpectralClustering(
        3, affinity="nearest_neighbors", n_neighbors=8, random_state=0
    ).fit_predict(x)
    assert adjusted_rand_score(reference, result.labels) == 1.0


@pytest.fixture(scope="module")
def clever_hans(tmp_path_factory):
    """A small CNN trained for a few seconds on shapes where every circle carries a magenta
    corner watermark: it learns the watermark (the shortcut); Grad-CAM of the test images
    (for their true class) goes through explain_dataset. Global max pooling lets the small
    patch drive the logits from the first epoch."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fastest on small convolutions, and reproducible
    try:
        x, y, _ = planted(500, seed=11)
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveMaxPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 5),
        )
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        gen = torch.Generator().manual_seed(0)
        for _ in range(4):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), 64):
                idx = perm[i : i + 64]
                loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        xs, ys, marks = planted(250, seed=12)
        model = ox.adapters.torch.export(net, torch.from_numpy(xs[:2]), exporter="legacy")
    finally:
        torch.set_num_threads(threads)
    result = explain_dataset(
        model, "gradcam", xs, tmp_path_factory.mktemp("hans"), target=ys, shard_size=64, show_progress=False
    )
    return model, result, xs, ys, marks


@pytest.mark.slow
def test_the_model_learnt_the_watermark_shortcut(clever_hans):
    model, _, xs, ys, marks = clever_hans
    others = xs[ys != 0].copy()
    others[np.ix_(range(len(others)), range(3), range(1, 6), range(1, 6))] = np.broadcast_to(
        MAGENTA, (3, 5, 5)
    )
    # a watermark turns almost any shape into a "circle"
    assert (model.predict(others).argmax(1) == 0).mean() >= 0.9
    assert (model.predict(xs[marks]).argmax(1) == 0).mean() >= 0.9


@pytest.mark.slow
def test_spray_puts_the_watermarked_images_in_a_cluster_of_their_own(clever_hans):
    from sklearn.metrics import adjusted_rand_score

    _, result, _, _, marks = clever_hans
    found = spray(result, size=16, n_neighbors=20)  # every test image's Grad-CAM map, read shard by shard
    flags = marks[[r["index"] for r in found.records]]
    assert len(flags) == 250 and 0.1 < flags.mean() < 0.3
    assert found.n_clusters >= 2  # the eigengap sees more than one reason
    # the clusters where watermarked images are the majority: what an analyst would flag
    hans = [j for j in range(found.n_clusters) if flags[found.labels == j].mean() > 0.5]
    members = np.isin(found.labels, hans)
    purity, recall = flags[members].mean(), members[flags].mean()
    ari = adjusted_rand_score(flags, members)
    print(
        f"SpRAy on {len(flags)} maps ({flags.sum()} watermarked): {found.n_clusters} clusters "
        f"(sizes {found.sizes().tolist()}), {len(hans)} of them watermarked, eigenvalues "
        f"{np.round(found.eigenvalues[:4], 3).tolist()}; purity {purity:.2f}, recall {recall:.2f}, "
        f"ARI {ari:.2f}"
    )
    assert len(hans) == 1 and purity >= 0.95 and recall >= 0.95 and ari >= 0.9
