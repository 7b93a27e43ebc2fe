"""Adversarial attacks on the model and on its explanations, on the torch backend
(torch is imported when an attack runs).

- :func:`fgsm`, :func:`pgd` (L∞ / L2, targeted or not, input bounds, seeded random start);
- :func:`explanation_stability`: a map before and after an adversarial example;
- :func:`topk_manipulation`: Ghorbani et al.'s top-k attack with softplus smoothing,
  changing the map while the predicted class stays the same;
- :func:`topk_intersection`: the overlap of two maps' top-k pixels.
"""

from onnxplain.attacks.explanation_attacks import explanation_stability, topk_intersection, topk_manipulation
from onnxplain.attacks.gradient_attacks import AttackResult, fgsm, pgd

__all__ = ["AttackResult", "explanation_stability", "fgsm", "pgd", "topk_intersection", "topk_manipulation"]
