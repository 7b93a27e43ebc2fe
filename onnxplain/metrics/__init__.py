"""Metrics that evaluate explanations, each returning a number per example plus a summary
(:class:`MetricResult`), batched (``batch_size``) and seeded.

- faithfulness: :func:`deletion`, :func:`insertion` (Petsiuk et al. 2018),
  :func:`pixel_flipping` with AOPC (Samek et al. 2017), :func:`road` (Rong et al. 2022),
  :func:`infidelity` (Yeh et al. 2019, Captum's definition);
- localisation: :func:`pointing_game`, :func:`energy_pointing_game`;
- robustness: :func:`sensitivity_max` (Captum's), :func:`local_lipschitz_estimate`;
- complexity: :func:`sparseness` (Gini), :func:`entropy`;
- randomisation: :func:`model_parameter_randomisation` (Adebayo et al. 2018), with
  :func:`similarity`, :func:`ssim`, :func:`hog_similarity`.

Metrics that re-run the model use its forward backend (ONNX Runtime under ``"auto"``);
those that recompute explanations take an explainer: an onnxplain method instance or a
callable ``explain(inputs, target=...) -> attributions``.
"""

from onnxplain.metrics._common import MetricResult, spearman
from onnxplain.metrics.complexity import entropy, sparseness
from onnxplain.metrics.faithfulness import (
    deletion,
    gaussian_blur,
    gaussian_perturbation,
    infidelity,
    insertion,
    noisy_linear_imputation,
    pixel_flipping,
    road,
)
from onnxplain.metrics.localisation import energy_pointing_game, pointing_game
from onnxplain.metrics.randomisation import (
    MEASURES,
    ParameterLayer,
    hog_similarity,
    model_parameter_randomisation,
    parameter_layers,
    randomized_model,
    similarity,
    ssim,
)
from onnxplain.metrics.robustness import (
    gaussian_noise,
    local_lipschitz_estimate,
    sensitivity_max,
    uniform_noise,
)

__all__ = [
    "MEASURES",
    "MetricResult",
    "ParameterLayer",
    "deletion",
    "energy_pointing_game",
    "entropy",
    "gaussian_blur",
    "gaussian_noise",
    "gaussian_perturbation",
    "hog_similarity",
    "infidelity",
    "insertion",
    "local_lipschitz_estimate",
    "model_parameter_randomisation",
    "noisy_linear_imputation",
    "parameter_layers",
    "pixel_flipping",
    "pointing_game",
    "randomized_model",
    "road",
    "sensitivity_max",
    "similarity",
    "sparseness",
    "spearman",
    "ssim",
    "uniform_noise",
]
