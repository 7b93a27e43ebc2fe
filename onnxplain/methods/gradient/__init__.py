"""Gradient methods: the derivative of a target with respect to the input, plain,
integrated, smoothed, or with modified backward rules at the rectifiers."""

from onnxplain.methods.gradient.deconvolution import Deconvolution
from onnxplain.methods.gradient.guided_backprop import GuidedBackprop
from onnxplain.methods.gradient.guided_grad_cam import GuidedGradCAM
from onnxplain.methods.gradient.input_x_gradient import InputXGradient
from onnxplain.methods.gradient.integrated_gradients import IntegratedGradients
from onnxplain.methods.gradient.noise_tunnel import NoiseTunnel
from onnxplain.methods.gradient.rect_grad import RectGrad
from onnxplain.methods.gradient.saliency import Saliency
from onnxplain.methods.gradient.smooth_grad import SmoothGrad

__all__ = [
    "Deconvolution",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "NoiseTunnel",
    "RectGrad",
    "Saliency",
    "SmoothGrad",
]
