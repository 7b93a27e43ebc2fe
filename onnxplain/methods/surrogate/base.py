"""What LIME and the SHAP estimators share: interpretable features, coalitions, responses.

An example x is split into M *interpretable features* by an integer ``feature_mask``
(superpixels from :mod:`onnxplain.segmentation`, columns of a table, any grouping). A
coalition z ∈ {0, 1}^M keeps the features with z_j = 1 and removes the others
(Ribeiro et al. 2016, Lundberg & Lee 2017):

    h_x(z) = z[mask] ⊙ x + (1 − z[mask]) ⊙ fill

The fill is a constant ``baselines`` (Captum's), any :mod:`onnxplain.infill` strategy, or
a ``background`` data set (B, ...), whose rows each serve as the fill and whose responses
are averaged, shap's interventional expectation:

    v(z) = (1/B) Σ_b f(z[mask] ⊙ x + (1 − z[mask]) ⊙ background_b).

A method only says which coalitions to evaluate and what to fit on the responses; the
coalitions of all N examples are evaluated here in forward passes of at most
``batch_size`` rows (examples mixed in one pass), so memory is bounded by ``batch_size``
and not by N × n_samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import batches
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import Objective, TargetLike
from onnxplain.core.validation import Params, Seed
from onnxplain.infill import Infill, blend
from onnxplain.methods._feature_mask import read_feature_mask
from onnxplain.methods.base import take_rows
from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution

#: Above this many features per example, a warning suggests grouping them.
MANY_FEATURES = 10_000


class SurrogateParams(Params):
    """The arguments every surrogate method validates."""

    n_samples: pydantic.PositiveInt | None = None
    perturbations_per_eval: pydantic.PositiveInt | None = None
    batch_size: pydantic.PositiveInt | None = None
    seed: Seed = None


@dataclass(frozen=True)
class SurrogateFit:
    """The fitted linear surrogate of each example, so users can judge it.

    ``coefficients``: (N, M), one column per id of ``feature_ids`` (the sorted ids of the
    ``feature_mask``; 0 for an id absent from an example); ``intercept``: (N,), the
    surrogate's value with every feature removed (for SHAP, f(baseline)); ``r2``: (N,)
    the weighted R² of the surrogate on its own samples (1 = a perfect local fit);
    ``n_samples``: (N,) coalitions evaluated per example, besides the empty and full ones
    for SHAP.
    """

    coefficients: np.ndarray
    intercept: np.ndarray
    r2: np.ndarray
    feature_ids: np.ndarray
    n_samples: np.ndarray


@dataclass(frozen=True)
class Features:
    """The interpretable features of each example.

    ``labels[n]``: the feature index 0..M_n−1 of every input value of example n, in the
    mask's own shape (broadcastable to one example: (1, H, W) for a segmentation);
    ``ids[n]``: the ``feature_mask`` id of each of its M_n features;
    ``feature_ids``: the sorted ids over the whole batch (the columns of per-feature
    outputs); ``columns[n]``: where example n's features sit among them.
    """

    labels: list[np.ndarray]
    ids: list[np.ndarray]
    feature_ids: np.ndarray
    columns: list[np.ndarray]
    example_shape: tuple[int, ...]

    @property
    def sizes(self) -> list[int]:
        return [len(i) for i in self.ids]

    def to_input_shape(self, values: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
        """Per-feature values (M_n,) of each example spread over the input's shape."""
        return np.stack([np.broadcast_to(v[lab], self.example_shape)
                         for v, lab in zip(values, self.labels)]).astype(dtype)

    def to_columns(self, values: list[np.ndarray]) -> np.ndarray:
        """Per-feature values as an (N, len(feature_ids)) array, 0 where absent."""
        out = np.zeros((len(values), len(self.feature_ids)))
        for n, (v, cols) in enumerate(zip(values, self.columns)):
            out[n, cols] = v
        return out


def parse_features(feature_mask: Any, x: np.ndarray) -> Features:
    """Read a ``feature_mask`` for inputs ``x`` (N, ...).

    The shapes accepted, and how a 3-D mask is read, are the rule of
    :func:`onnxplain.methods._feature_mask.read_feature_mask`, shared with FeatureAblation:
    (H, W), (N or 1, H, W) one per example (as :mod:`onnxplain.segmentation` returns, also
    when N == C), (C, H, W), (N or 1, C, H, W), where dims of size 1 broadcast. Without a
    mask, every input value is its own feature (Captum's default).
    """
    n = len(x)
    example = x.shape[1:]
    mask = read_feature_mask(feature_mask, x)
    feature_ids = np.unique(mask)
    labels, ids, columns = [], [], []
    for i in range(n):
        m = mask[i if mask.shape[0] > 1 else 0]
        own, inverse = np.unique(m, return_inverse=True)
        labels.append(inverse.reshape(m.shape))
        ids.append(own)
        columns.append(np.searchsorted(feature_ids, own))
    if max(len(i) for i in ids) > MANY_FEATURES:
        warnings.warn(
            f"{max(len(i) for i in ids)} interpretable features per example: the surrogate will be "
            "slow and noisy; group them with a feature_mask (e.g. onnxplain.segmentation.slic)",
            UserWarning, stacklevel=3,
        )
    return Features(labels, ids, feature_ids, columns, example)


def parse_samples(samples: Any, features: Features, n: int) -> list[np.ndarray]:
    """Explicit coalitions: (S, M) for every example or (N, S, M), one column per id of
    ``features.feature_ids``, values 0/1. Returns each example's (S, M_n) bool array."""
    if hasattr(samples, "detach") and hasattr(samples, "cpu"):
        samples = samples.detach().cpu().numpy()
    z = np.asarray(samples)
    m = len(features.feature_ids)
    if z.ndim == 2:
        z = np.broadcast_to(z[None], (n, *z.shape))
    if z.ndim != 3 or z.shape[0] != n or z.shape[2] != m or z.shape[1] == 0:
        ids = features.feature_ids[:8].tolist()
        raise InputValidationError(
            f"samples of shape {np.shape(samples)} do not fit: give binary coalitions (S, {m}) "
            f"for every example or ({n}, S, {m}), one column per feature id {ids}"
            f"{'...' if m > 8 else ''}"
        )
    if not np.isin(z, (0, 1)).all():
        raise InputValidationError("samples must hold 0 (feature removed) or 1 (feature kept) only")
    return [z[i][:, cols].astype(bool) for i, cols in enumerate(features.columns)]


@dataclass
class Setup:
    """Everything :meth:`SurrogateAttribution._responses` needs for one call."""

    x: np.ndarray
    objective: Objective
    features: Features
    filler: Filler | None
    background: np.ndarray | None
    rows: int
    rng: np.random.Generator
    show_progress: bool | None


class SurrogateAttribution(PerturbationAttribution):
    """Base of LIME, Kernel SHAP and Shapley value sampling (forward passes only)."""

    def _setup(
        self,
        inputs: Any,
        baselines: Any,
        infill: Infill | None,
        background: Any,
        feature_mask: Any,
        target: TargetLike,
        params: SurrogateParams,
        show_progress: bool | None,
    ) -> Setup:
        x = self._inputs(inputs)
        features = parse_features(feature_mask, x)
        sample_rng, fill_rng = np.random.default_rng(params.seed).spawn(2)
        bg = None
        filler = None
        if background is not None:
            if baselines is not None or infill is not None:
                raise InputValidationError(
                    "pass one of baselines (a constant), infill (an onnxplain.infill strategy) or "
                    "background (a data set whose rows replace removed features), not several"
                )
            bg = self._background(background, x)
        else:
            filler = Filler(self._infill(x, baselines, infill), x, fill_rng)
        rows = self._batch_size(params.batch_size)
        if params.perturbations_per_eval is not None:
            per_eval = params.perturbations_per_eval * len(x)
            rows = min(rows, per_eval) if params.batch_size is not None else per_eval
        objective = self._objective(x, target)
        return Setup(x, objective, features, filler, bg, rows, sample_rng, show_progress)

    @staticmethod
    def _background(background: Any, x: np.ndarray) -> np.ndarray:
        if hasattr(background, "detach") and hasattr(background, "cpu"):
            background = background.detach().cpu().numpy()
        bg = np.asarray(background)
        if bg.ndim == x.ndim - 1:
            bg = bg[None]
        if (bg.ndim != x.ndim or bg.shape[1:] != x.shape[1:] or len(bg) == 0
                or not np.issubdtype(bg.dtype, np.number)):
            raise InputValidationError(
                f"background of shape {np.shape(background)} does not fit the inputs' shape "
                f"{x.shape}: give a data set (B, *{x.shape[1:]}) of rows that replace removed features"
            )
        if not np.isfinite(bg).all():
            raise InputValidationError("background contains NaN or Inf values")
        return np.ascontiguousarray(bg, dtype=x.dtype)

    def _responses(
        self,
        setup: Setup,
        samples: list[np.ndarray],
        desc: str,
        distance: Literal["cosine", "euclidean"] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """v(z) for every coalition ``samples[n]`` (S_n, M_n) of every example n.

        With ``distance``, also the distance between x_n and each perturbed input (its
        mean over the background rows), as Captum's LIME kernel measures it. Returns
        lists of (S_n,) arrays.
        """
        x, feats = setup.x, setup.features
        b = 1 if setup.background is None else len(setup.background)
        counts = np.array([len(s) for s in samples]) * b  # rows per example
        ends = np.cumsum(counts)
        total = int(ends[-1])
        sums = [np.zeros(len(s)) for s in samples]
        dist_sums = [np.zeros(len(s)) for s in samples] if distance is not None else None
        flat = x.reshape(len(x), -1)
        norms = np.linalg.norm(flat, axis=1)
        static = setup.filler.static if setup.filler is not None else None
        # with a fill that is the same for every sample, each distance follows from per-feature
        # sums, without reading the perturbed input again
        per_feature = (None if distance is None or static is None
                       else [_feature_sums(x[i], static[i], feats.labels[i], s.shape[1])
                             for i, s in enumerate(samples)])
        n_chunks = -(-total // setup.rows)
        for sl in self._progress(batches(total, setup.rows), n_chunks, setup.show_progress, desc):
            # rows are ordered (example, coalition, background row); index only this chunk
            row = np.arange(sl.start, sl.stop)
            ex = np.searchsorted(ends, row, side="right")
            local = row - (ends - counts)[ex]
            sample, bg_row = local // b, local % b
            keep = np.empty((len(row), *feats.labels[0].shape), dtype=bool)
            for i in np.unique(ex):
                keep[ex == i] = samples[i][sample[ex == i]][:, feats.labels[i]]
            inputs = take_rows(x, ex)
            if setup.background is not None:
                perturbed = blend(inputs, keep, setup.background[bg_row])
            else:
                perturbed = setup.filler(ex, inputs, keep)
            scores = self._scores(perturbed, setup.objective.take(ex))
            dists = (_distance(flat[ex], norms[ex], perturbed.reshape(len(row), -1), distance)
                     if distance is not None and per_feature is None else None)
            for i in np.unique(ex):
                sel = ex == i
                np.add.at(sums[i], sample[sel], scores[sel])
                if per_feature is not None:
                    got = _distance_from_sums(samples[i][sample[sel]], per_feature[i], norms[i], distance)
                    np.add.at(dist_sums[i], sample[sel], got)
                elif dists is not None:
                    np.add.at(dist_sums[i], sample[sel], dists[sel])
        out = [v / b for v in sums]
        return out, ([d / b for d in dist_sums] if dist_sums is not None else None)


def _distance(original: np.ndarray, norms: np.ndarray, perturbed: np.ndarray, mode: str) -> np.ndarray:
    """Row-wise cosine distance ``1 − a·b / (‖a‖‖b‖)`` or Euclidean distance ``‖a − b‖``,
    in the inputs' precision (as Captum)."""
    if mode == "euclidean":
        return np.linalg.norm(original - perturbed, axis=1).astype(np.float64)
    dot = np.einsum("ij,ij->i", original, perturbed).astype(np.float64)
    size = np.sqrt(np.einsum("ij,ij->i", perturbed, perturbed)).astype(np.float64)
    return _cosine_distance(dot, norms, size)


def _cosine_distance(dot: np.ndarray, norm_a: Any, norm_b: np.ndarray) -> np.ndarray:
    """``1 − a·b / (‖a‖‖b‖)`` from the dot product and the norms."""
    eps = 1e-8  # as torch's CosineSimilarity: a zero vector has similarity 0
    return 1.0 - dot / (np.maximum(norm_a, eps) * np.maximum(norm_b, eps))


def _feature_sums(x: np.ndarray, fill: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """(4, M) float64 sums over each feature's input values of x², x·r, r² and (x − r)²,
    for one example x and its fill r."""
    lab = np.broadcast_to(labels, x.shape).ravel()
    a, r = x.ravel().astype(np.float64), fill.ravel().astype(np.float64)
    return np.stack([np.bincount(lab, weights=w, minlength=m) for w in (a * a, a * r, r * r, (a - r) ** 2)])


def _distance_from_sums(z: np.ndarray, sums: np.ndarray, norm: float, mode: str) -> np.ndarray:
    """:func:`_distance` between one example and its perturbations ``z`` (S, M) (True: the
    feature kept, else its fill), from the example's :func:`_feature_sums`."""
    kept, gone = z.astype(np.float64), (~z).astype(np.float64)
    if mode == "euclidean":
        return np.sqrt(np.maximum(gone @ sums[3], 0))
    size = np.sqrt(np.maximum(kept @ sums[0] + gone @ sums[2], 0))
    return _cosine_distance(kept @ sums[0] + gone @ sums[1], norm, size)


def interpretable_distance(z: np.ndarray, mode: str) -> np.ndarray:
    """Distance of each coalition z (S, M) from the all-ones vector (the original input),
    as the ``lime`` package measures it."""
    ones = np.ones(z.shape)
    return _distance(ones, np.full(len(z), np.sqrt(z.shape[1])), z.astype(np.float64), mode)
