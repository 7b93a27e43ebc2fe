"""Perturbation methods: change parts of the input and watch the output."""

from onnxplain.methods.perturbation.occlusion import Occlusion

__all__ = ["Occlusion"]
