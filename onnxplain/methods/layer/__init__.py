"""Layer methods: attributions to an intermediate tensor instead of the input."""

from onnxplain.methods.layer.layer_activation import LayerActivation
from onnxplain.methods.layer.layer_gradient_x_activation import LayerGradientXActivation
from onnxplain.methods.layer.layer_integrated_gradients import LayerIntegratedGradients

__all__ = ["LayerActivation", "LayerGradientXActivation", "LayerIntegratedGradients"]
