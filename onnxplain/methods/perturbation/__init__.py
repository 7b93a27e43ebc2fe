"""Perturbation methods: change parts of the input and watch the output.

What replaces the removed parts is an in-fill strategy from :mod:`onnxplain.infill`.
"""

from onnxplain.methods.perturbation.base import PerturbationAttribution
from onnxplain.methods.perturbation.extremal_perturbation import ExtremalPerturbation
from onnxplain.methods.perturbation.feature_ablation import FeatureAblation
from onnxplain.methods.perturbation.meaningful_perturbation import MeaningfulPerturbation
from onnxplain.methods.perturbation.occlusion import Occlusion
from onnxplain.methods.perturbation.rise import RISE

__all__ = [
    "RISE",
    "ExtremalPerturbation",
    "FeatureAblation",
    "MeaningfulPerturbation",
    "Occlusion",
    "PerturbationAttribution",
]
