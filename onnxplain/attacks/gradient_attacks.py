"""Adversarial examples from the model's own gradients: FGSM and PGD."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.validation import check_input, check_seed


@dataclass
class AttackResult:
    """``adversarial``: the perturbed inputs (N, ...); ``original_prediction`` and
    ``adversarial_prediction``: the predicted classes (N,); ``success``: per example,
    the prediction moved off the label (untargeted) or onto the target (targeted);
    ``details``: anything else (perturbation norms)."""

    adversarial: np.ndarray
    original_prediction: np.ndarray
    adversarial_prediction: np.ndarray
    success: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success))

    @property
    def flip_rate(self) -> float:
        """Share of examples whose predicted class changed."""
        return float(np.mean(self.original_prediction != self.adversarial_prediction))


def _check(model, inputs, eps, norm, bounds, labels, targeted, batch_size):
    x = check_input(model, inputs)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise InputValidationError(f"eps must be a number >= 0, got {eps!r}")
    if norm not in ("inf", "l2"):
        raise InputValidationError(f"norm must be 'inf' or 'l2', got {norm!r}")
    if bounds is not None and (len(bounds) != 2 or bounds[0] >= bounds[1]):
        raise InputValidationError(f"bounds must be (low, high) with low < high, or None, got {bounds!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputValidationError(f"batch_size must be a positive integer, got {batch_size!r}")
    pred = model.predict(x, batch_size=batch_size).reshape(len(x), -1).argmax(axis=1)
    if labels is None:
        if targeted:
            raise InputValidationError("a targeted attack needs labels= (the target class per example)")
        labels = pred
    labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(x),)).copy()
    return x, pred, labels


def _project(torch, delta, eps: float, norm: str):
    if norm == "inf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / flat).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def _step(torch, grad, alpha: float, norm: str):
    if norm == "inf":
        return alpha * grad.sign()
    g = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return alpha * grad / g.view(-1, *([1] * (grad.dim() - 1)))


def pgd(
    model: Model,
    inputs: Any,
    eps: float,
    labels: Any = None,
    targeted: bool = False,
    norm: str = "inf",
    n_steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    seed: int | None = 0,
    batch_size: int = 32,
    device: str = "auto",
) -> AttackResult:
    """Projected gradient descent (Madry, Makelov, Schmidt, Tsipras & Vladu 2018).

    Starting from x (or, with ``random_start``, a seeded uniform point of the ball), repeat
    ``n_steps`` times

        x ← Π_{B(x₀, ε) ∩ bounds}( x ± α · s(∇ₓ CE(f(x), y)) ),

    s = sign (``norm="inf"``) or ∇/‖∇‖₂ (``norm="l2"``); + for an untargeted attack (move
    away from ``labels``, default: the predicted class), − for a targeted one (move to
    ``labels``). α = ``step_size`` (default 2.5·ε/n_steps). CE is the cross-entropy of the
    softmax of the model's output (explain a model that outputs logits). ``bounds``: the
    valid input range (None: unbounded). Runs on the torch backend, ``batch_size`` examples
    at a time.
    """
    import torch

    from onnxplain.attacks._torch import to_tensor, torch_module

    x, pred, labels = _check(model, inputs, eps, norm, bounds, labels, targeted, batch_size)
    if not isinstance(n_steps, int) or n_steps < 1:
        raise InputValidationError(f"n_steps must be a positive integer, got {n_steps!r}")
    alpha = 2.5 * eps / n_steps if step_size is None else float(step_size)
    forward, dev = torch_module(model, device)
    gen = torch.Generator().manual_seed(check_seed(seed, "attack") or 0)
    out = np.empty_like(x)
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        x0 = to_tensor(x[sl], dev)
        y = torch.from_numpy(labels[sl]).to(dev)
        delta = torch.zeros_like(x0)
        if random_start and eps > 0:
            if norm == "inf":
                delta = (torch.rand(x0.shape, generator=gen) * 2 - 1).to(dev) * eps
            else:
                d = torch.randn(x0.shape, generator=gen)
                d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                r = torch.rand(len(d), generator=gen).view(-1, 1, 1, 1) ** (1 / d[0].numel())
                delta = (d * r * eps).to(dev)
        adv = x0 + delta
        if bounds is not None:
            adv = adv.clamp(*bounds)
        for _ in range(n_steps):
            adv = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = torch.nn.functional.cross_entropy(forward(adv).flatten(1), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, adv)
            step = _step(torch, grad, alpha, norm)
            adv = adv.detach() + (-step if targeted else step)
            adv = x0 + _project(torch, adv - x0, eps, norm)
            if bounds is not None:
                adv = adv.clamp(*bounds)
        out[sl] = adv.detach().cpu().numpy()
    adv_pred = model.predict(out, batch_size=batch_size).reshape(len(x), -1).argmax(axis=1)
    success = adv_pred == labels if targeted else adv_pred != labels
    diff = (out - x).reshape(len(x), -1).astype(np.float64)
    return AttackResult(
        out,
        pred,
        adv_pred,
        success,
        {"linf": np.abs(diff).max(axis=1), "l2": np.sqrt((diff**2).sum(axis=1)), "labels": labels},
    )


def fgsm(
    model: Model,
    inputs: Any,
    eps: float,
    labels: Any = None,
    targeted: bool = False,
    norm: str = "inf",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 32,
    device: str = "auto",
) -> AttackResult:
    """The fast gradient sign method (Goodfellow, Shlens & Szegedy 2015):

        x_adv = clip( x ± ε · sign(∇ₓ CE(f(x), y)) )

    one step of :func:`pgd` from x with α = ε (``norm="l2"``: the fast gradient method,
    ε · ∇/‖∇‖₂). Arguments and result as :func:`pgd`.

    >>> import onnxplain as ox
    >>> from onnxplain.attacks import fgsm
    >>> model = ox.examples.shapes_model()
    >>> x = ox.examples.shapes_dataset(4, seed=5).images
    >>> res = fgsm(model, x, eps=0.03)
    >>> res.adversarial.shape, bool(res.details["linf"].max() <= 0.03 + 1e-6)
    ((4, 3, 64, 64), True)
    """
    return pgd(
        model,
        inputs,
        eps,
        labels=labels,
        targeted=targeted,
        norm=norm,
        n_steps=1,
        step_size=eps,
        random_start=False,
        bounds=bounds,
        batch_size=batch_size,
        device=device,
    )
