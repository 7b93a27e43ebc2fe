"""Class activation maps: weight the channels of a feature map and sum them."""

from onnxplain.methods.cam.base import CAMBase
from onnxplain.methods.cam.grad_cam import GradCAM

__all__ = ["CAMBase", "GradCAM"]
