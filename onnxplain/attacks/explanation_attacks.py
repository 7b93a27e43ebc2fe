"""Attacks on explanations: how stable a map is under an adversarial example, and a
manipulation attack that moves the map while keeping the prediction."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.validation import check_input
from onnxplain.metrics._common import MetricResult, explain, spearman
from onnxplain.metrics.randomisation import ssim


def topk_intersection(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per example, the share of the ``k`` largest entries of map ``a`` that are also among
    the ``k`` largest of ``b`` (Ghorbani et al. 2019's top-k intersection); maps (N, ...)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= a.shape[1]:
        raise InputValidationError(f"k must be an integer in [1, {a.shape[1]}], got {k!r}")
    ta = np.argsort(-a, axis=1, kind="stable")[:, :k]
    tb = np.argsort(-b, axis=1, kind="stable")[:, :k]
    return np.array([len(np.intersect1d(p, q)) / k for p, q in zip(ta, tb)])


def _pixel_maps(attr: np.ndarray) -> np.ndarray:
    a = np.asarray(attr, dtype=np.float64)
    return np.abs(a).sum(axis=1) if a.ndim == 4 else a


def _unit(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def explanation_stability(
    model: Model,
    inputs: Any,
    eps: float = 0.03,
    method: Any = None,
    target: str = "adversarial",
    k: int | None = None,
    attack: str = "fgsm",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 32,
    **attack_kwargs: Any,
) -> MetricResult:
    """Explanations before and after an adversarial attack (the survey's Fig. 34: Grad-CAM
    of an image and of its FGSM adversarial example).

    ``method``: an explainer (default ``ox.GradCAM(model)``); ``attack``: ``"fgsm"`` or
    ``"pgd"`` (with ``attack_kwargs``) at radius ``eps``; ``target``: ``"adversarial"``
    explains each image's own predicted class (what a user would see), ``"original"``
    explains the original prediction in both. Similarity of the two maps (absolute maps,
    channels summed): ``scores`` Spearman rank correlation, ``details["ssim"]`` SSIM of the
    min-max scaled maps, ``details["topk_intersection"]`` with ``k`` (default 2 % of the
    pixels); ``details["attack"]`` the :class:`AttackResult`, ``details["before"]`` /
    ``["after"]`` the maps.
    """
    from onnxplain.attacks.gradient_attacks import fgsm, pgd
    from onnxplain.methods import GradCAM

    if target not in ("adversarial", "original"):
        raise InputValidationError(f"target must be 'adversarial' or 'original', got {target!r}")
    if attack not in ("fgsm", "pgd"):
        raise InputValidationError(f"attack must be 'fgsm' or 'pgd', got {attack!r}")
    x = check_input(model, inputs)
    run = fgsm if attack == "fgsm" else pgd
    res = run(model, x, eps, bounds=bounds, batch_size=batch_size, **attack_kwargs)
    explainer = method if method is not None else GradCAM(model)
    before = _pixel_maps(explain(explainer, x, res.original_prediction))
    cls = res.adversarial_prediction if target == "adversarial" else res.original_prediction
    after = _pixel_maps(explain(explainer, res.adversarial, cls))
    kk = max(1, before[0].size // 50) if k is None else k
    rho = np.array([spearman(a, b) for a, b in zip(before, after)])
    ss = np.array([ssim(_unit(a), _unit(b), data_range=1.0) for a, b in zip(before, after)])
    return MetricResult(
        "explanation_stability",
        rho,
        details={
            "ssim": ss,
            "topk_intersection": topk_intersection(before, after, kk),
            "k": kk,
            "attack": res,
            "before": before,
            "after": after,
        },
    )


def topk_manipulation(
    model: Model,
    inputs: Any,
    eps: float = 8 / 255,
    k: int | None = None,
    n_steps: int = 50,
    step_size: float | None = None,
    beta: float = 10.0,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 16,
    device: str = "auto",
) -> MetricResult:
    """The top-k intersection attack on gradient maps (Ghorbani, Abid & Zou, AAAI 2019,
    "Interpretation of neural networks is fragile"), with the second-order gradients of
    Dombrowski et al. 2019 ("Explanations can be manipulated and geometry is to blame"):
    every ReLU is replaced by Softplus(β) in a copy of the torch module, so the saliency
    map S(x) = Σ_c |∂y_c/∂x| has a useful gradient.

    With B the ``k`` most salient pixels of the original map (default k: 2 % of the
    pixels) and c the predicted class, iterate ``n_steps`` times

        x̃ ← Π_{B∞(x, ε) ∩ bounds}( x̃ − α · sign ∇_x̃ Σ_{i ∈ B} S_i(x̃) )

    (α = ``step_size``, default ε/10) and keep, per example, the iterate with the smallest
    top-k intersection of the real (ReLU) model's saliency map among those that the model
    still assigns to class c (Ghorbani et al.'s acceptance rule). ``scores``: that top-k
    intersection (1 = unchanged map); ``details``: ``adversarial`` inputs,
    ``original_prediction``, ``adversarial_prediction`` (equal by construction),
    ``before``/``after`` maps, ``spearman`` of the two maps.
    """
    import torch

    from onnxplain.attacks._torch import to_tensor, torch_module

    x = check_input(model, inputs)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise InputValidationError(f"eps must be a number > 0, got {eps!r}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise InputValidationError(f"n_steps must be a positive integer, got {n_steps!r}")
    hw = x.shape[2] * x.shape[3]
    k = max(1, hw // 50) if k is None else k
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= hw:
        raise InputValidationError(f"k must be an integer in [1, {hw}], got {k!r}")
    alpha = eps / 10 if step_size is None else float(step_size)
    real, dev = torch_module(model, device)
    smooth, _ = torch_module(model, device, softplus_beta=beta)

    def saliency(fwd, xb, cls, create_graph=False):
        xb = xb if xb.requires_grad else xb.detach().requires_grad_(True)
        with torch.enable_grad():
            score = fwd(xb).flatten(1).gather(1, cls[:, None]).sum()
            (g,) = torch.autograd.grad(score, xb, create_graph=create_graph)
        return g.abs().sum(dim=1).flatten(1)

    adv_all = x.copy()
    before_all = np.empty((len(x), hw))
    after_all = np.empty((len(x), hw))
    best_all = np.ones(len(x))
    pred_all = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        x0 = to_tensor(x[sl], dev)
        with torch.no_grad():
            cls = real(x0).flatten(1).argmax(dim=1)
        s0 = saliency(real, x0, cls).detach()
        top = s0.topk(k, dim=1).indices
        top_mask = torch.zeros_like(s0).scatter_(1, top, 1.0)
        best = torch.ones(len(x0), dtype=torch.float64)
        best_x = x0.clone()
        best_s = s0.clone()
        adv = x0.clone()
        for _ in range(n_steps):
            adv = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = (saliency(smooth, adv, cls, create_graph=True) * top_mask).sum()
                (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() - alpha * grad.sign()
            adv = x0 + (adv - x0).clamp(-eps, eps)
            if bounds is not None:
                adv = adv.clamp(*bounds)
            with torch.no_grad():
                same = real(adv).flatten(1).argmax(dim=1) == cls
            s = saliency(real, adv, cls).detach()
            inter = (s.topk(k, dim=1).indices[:, :, None] == top[:, None, :]).any(-1).sum(1).double() / k
            better = same.cpu() & (inter.cpu() < best)
            best = torch.where(better, inter.cpu(), best)
            idx = better.nonzero().flatten().to(dev)
            best_x[idx] = adv[idx].detach()
            best_s[idx] = s[idx]
        adv_all[sl] = best_x.cpu().numpy()
        before_all[sl] = s0.cpu().numpy()
        after_all[sl] = best_s.cpu().numpy()
        best_all[sl] = best.numpy()
        pred_all[sl] = cls.cpu().numpy()
    adv_pred = model.predict(adv_all, batch_size=batch_size).reshape(len(x), -1).argmax(axis=1)
    shape = (len(x), *x.shape[2:])
    return MetricResult(
        "topk_intersection",
        best_all,
        details={
            "adversarial": adv_all,
            "original_prediction": pred_all,
            "adversarial_prediction": adv_pred,
            "before": before_all.reshape(shape),
            "after": after_all.reshape(shape),
            "k": k,
            "spearman": np.array([spearman(a, b) for a, b in zip(before_all, after_all)]),
            "linf": np.abs(adv_all - x).reshape(len(x), -1).max(axis=1),
        },
    )
