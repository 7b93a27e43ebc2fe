"""Class activation maps: weight the channels of a feature map and sum them.

Gradient variants (torch backend): GradCAM, GradCAMPlusPlus, SmoothGradCAMPlusPlus, XGradCAM, LayerCAM,
HiResCAM.
Forward-only variants (ONNX Runtime): CAM, ScoreCAM, AblationCAM, EigenCAM.
"""

from onnxplain.methods.cam.ablation_cam import AblationCAM
from onnxplain.methods.cam.base import CAMBase, LayerData
from onnxplain.methods.cam.cam import CAM
from onnxplain.methods.cam.eigen_cam import EigenCAM
from onnxplain.methods.cam.grad_cam import GradCAM
from onnxplain.methods.cam.grad_cam_plus_plus import GradCAMPlusPlus
from onnxplain.methods.cam.hires_cam import HiResCAM
from onnxplain.methods.cam.layer_cam import LayerCAM
from onnxplain.methods.cam.score_cam import ScoreCAM
from onnxplain.methods.cam.smooth_grad_cam_plus_plus import SmoothGradCAMPlusPlus
from onnxplain.methods.cam.xgrad_cam import XGradCAM

__all__ = [
    "CAM",
    "AblationCAM",
    "CAMBase",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerData",
    "ScoreCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]
