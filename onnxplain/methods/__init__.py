"""Explanation methods, one file each, written against the backend interface only."""

from onnxplain.methods.base import Attribution
from onnxplain.methods.cam import CAMBase, GradCAM
from onnxplain.methods.gradient import InputXGradient, IntegratedGradients, Saliency
from onnxplain.methods.perturbation import Occlusion

__all__ = [
    "Attribution",
    "CAMBase",
    "GradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "Occlusion",
    "Saliency",
]
