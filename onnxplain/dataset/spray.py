"""SpRAy, Spectral Relevance Analysis: Lapuschkin et al., "Unmasking Clever Hans predictors
and assessing what machines really learn", Nature Communications 10, 1096 (2019).

Heat maps of many images are downsized and compared; spectral clustering groups the
images the model decides on *for the same reason*, and a cluster whose maps all light up
the same odd place (a watermark, a frame, a background) exposes a shortcut.

The steps, as in the paper:

1. each map (channels summed for input-shaped attributions) is area-averaged to
   ``size`` and divided by its largest magnitude, then flattened: x_i;
2. an affinity from the k-nearest-neighbour graph: w_ij = 1 when x_j is among the
   ``n_neighbors`` nearest (Euclidean) neighbours of x_i or x_i among those of x_j;
3. the normalised Laplacian L = I − D^{-1/2} W D^{-1/2} (D the degrees) and its
   smallest eigenvalues 0 = λ_1 ≤ λ_2 ≤ ...; the eigengap heuristic takes as the
   number of clusters k the position of the largest gap λ_{k+1} − λ_k (k ≤ ``max_clusters``);
4. k-means (k-means++ seeding, ``n_init`` restarts) on the rows of the first k
   eigenvectors, each scaled to unit length (Ng, Jordan & Weiss, NIPS 2001).

Dense: memory and time grow with the square of the number of maps (a few thousand maps
per call; select a class with ``where``). numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError


@dataclass
class SprayResult:
    """``labels`` (n,) cluster per map; ``n_clusters``; ``eigenvalues`` the smallest
    eigenvalues of the normalised Laplacian (ascending); ``eigengap`` their successive
    differences (``eigengap[k-1]`` = λ_{k+1} − λ_k); ``embedding`` (n, k) the spectral
    embedding the clusters were found in; ``prototypes`` (k, h, w) each cluster's mean
    downsized map; ``maps`` (n, h, w) the downsized, normalised maps; ``records`` the
    index records of the maps when clustered from a :class:`DatasetResult`."""

    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    eigengap: np.ndarray
    embedding: np.ndarray
    prototypes: np.ndarray
    maps: np.ndarray
    records: list[dict] | None = None

    def sizes(self) -> np.ndarray:
        """Images per cluster."""
        return np.bincount(self.labels, minlength=self.n_clusters)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that average the input cells each output cell covers."""
    edges = np.linspace(0, n_in, n_out + 1)
    cells = np.arange(n_in)
    lo = np.maximum(edges[:-1, None], cells[None, :])
    hi = np.minimum(edges[1:, None], cells[None, :] + 1)
    overlap = np.clip(hi - lo, 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def downsize(maps: np.ndarray, size: tuple[int, int], layout: str = "NCHW") -> np.ndarray:
    """Area-average (N, H, W) maps, or (N, C, H, W) attributions summed over channels, to
    ``size``, each divided by its largest magnitude (an all-zero map stays zero)."""
    from onnxplain.dataset.metrics import to_maps

    m = to_maps(maps, layout)
    rows, cols = _area_matrix(m.shape[1], size[0]), _area_matrix(m.shape[2], size[1])
    small = np.einsum("ih,nhw,jw->nij", rows, m, cols)
    peak = np.abs(small).reshape(len(small), -1).max(axis=1)
    return small / np.where(peak > 0, peak, 1)[:, None, None]


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int, max_iter: int = 300) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; the labels of the run with least inertia."""
    best, best_inertia = None, np.inf
    n = len(x)
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d2 = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
            total = d2.sum()
            centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
        c = np.asarray(centres)
        labels = np.full(n, -1)
        for _ in range(max_iter):
            d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            new = d2.argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    c[j] = members.mean(axis=0)
        inertia = ((x - c[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def _collect(
    source: Any, size: tuple[int, int], layout: str, where: Callable[[dict], bool] | None
) -> tuple[np.ndarray, list[dict] | None]:
    from onnxplain.dataset.store import DatasetResult

    if isinstance(source, DatasetResult):
        layout = "NHWC" if (source.settings.get("preprocess") or {}).get("layout") == "NHWC" else "NCHW"
        records = source.records()
        parts, kept, pos = [], [], 0
        for attributions in source.maps():  # one shard at a time: only the small maps stay
            recs = records[pos : pos + len(attributions)]
            pos += len(attributions)
            keep = np.array([where is None or bool(where(r)) for r in recs], dtype=bool)
            if keep.any():
                parts.append(downsize(attributions[keep], size, layout))
                kept.extend(r for r, k in zip(recs, keep) if k)
        if not parts:
            raise InputValidationError("spray: no maps left to cluster (check where=)")
        return np.concatenate(parts), kept
    if where is not None:
        raise InputValidationError("spray: where= filters a DatasetResult's records; index an array yourself")
    if isinstance(source, np.ndarray):
        return downsize(source, size, layout), None
    if isinstance(source, Iterable):
        # single (H, W) maps, or batches of maps or attributions
        arrays = [np.asarray(a)[None] if np.ndim(a) == 2 else np.asarray(a) for a in source]
        return np.concatenate([downsize(a, size, layout) for a in arrays]), None
    raise InputValidationError(
        f"spray takes a DatasetResult or an array of maps, got {type(source).__name__}"
    )


def spray(
    source: Any,
    n_clusters: int | None = None,
    *,
    size: int | tuple[int, int] = 32,
    n_neighbors: int = 10,
    max_clusters: int = 10,
    where: Callable[[dict], bool] | None = None,
    layout: str = "NCHW",
    n_init: int = 10,
    seed: int = 0,
) -> SprayResult:
    """Spectral clustering of heat maps (SpRAy, Lapuschkin et al. 2019; see the module).

    Parameters
    ----------
    source : DatasetResult or array
        The results of :func:`~onnxplain.dataset.explain_dataset` (read shard by shard;
        ``where`` picks records, e.g. ``lambda r: r["target"] == 3``), or maps (N, H, W)
        or attributions (N, C, H, W).
    n_clusters : int or None
        Fixed number of clusters; None: the eigengap heuristic (up to ``max_clusters``).
    size : int or (h, w)
        The downsized map's size (the paper: a few dozen pixels).
    n_neighbors : int
        k of the k-nearest-neighbour affinity.
    n_init, seed : int
        k-means restarts and the seed of their random generator.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> left = np.zeros((20, 16, 16)); left[:, 4:8, 2:6] = 1
    >>> right = np.zeros((20, 16, 16)); right[:, 8:12, 10:14] = 1
    >>> maps = np.concatenate([left, right]) + 0.05 * rng.random((40, 16, 16))
    >>> result = spray(maps, size=8, n_neighbors=5)
    >>> result.n_clusters, len(set(result.labels[:20])), len(set(result.labels[20:]))
    (2, 1, 1)
    """
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if len(size) != 2 or min(size) < 1:
        raise InputValidationError(f"size must be a positive int or (h, w), got {size!r}")
    x3, records = _collect(source, size, layout, where)
    x = x3.reshape(len(x3), -1)
    n = len(x)
    if n < 3:
        raise InputValidationError(f"spray needs at least 3 maps, got {n}")
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise InputValidationError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if n_clusters is not None and not 1 <= n_clusters <= n:
        raise InputValidationError(f"n_clusters must lie in [1, {n}], got {n_clusters}")
    k_nn = min(int(n_neighbors), n - 1)
    sq = (x * x).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * (x @ x.T), 0))
    np.fill_diagonal(dist, np.inf)
    neighbours = np.argpartition(dist, k_nn - 1, axis=1)[:, :k_nn]
    w = np.zeros((n, n))
    w[np.repeat(np.arange(n), k_nn), neighbours.ravel()] = 1.0
    w = np.maximum(w, w.T)
    d = w.sum(axis=1)
    inv_sqrt = 1.0 / np.sqrt(d)
    laplacian = np.eye(n) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    m = min(n, max(int(max_clusters), n_clusters or 0) + 1)
    values, vectors = np.linalg.eigh(laplacian)  # ascending
    values, vectors = values[:m], vectors[:, :m]
    values = np.clip(values, 0, None)
    gaps = np.diff(values)
    if n_clusters is None:
        n_clusters = int(np.argmax(gaps[: max(1, m - 1)]) + 1) if len(gaps) else 1
    embedding = vectors[:, :n_clusters]
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    embedding = embedding / np.where(norms > 0, norms, 1)
    rng = np.random.default_rng(seed)
    labels = _kmeans(embedding, n_clusters, rng, n_init) if n_clusters > 1 else np.zeros(n, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    prototypes = np.stack(
        [x3[labels == j].mean(axis=0) if np.any(labels == j) else np.zeros(size) for j in range(n_clusters)]
    )
    return SprayResult(labels, n_clusters, values, gaps, embedding, prototypes, x3, records)


__all__ = ["SprayResult", "downsize", "spray"]
