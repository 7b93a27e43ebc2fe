"""Gradient methods: the derivative of a target with respect to the input."""

from onnxplain.methods.gradient.input_x_gradient import InputXGradient
from onnxplain.methods.gradient.integrated_gradients import IntegratedGradients
from onnxplain.methods.gradient.saliency import Saliency

__all__ = ["InputXGradient", "IntegratedGradients", "Saliency"]
