"""Explanation methods, one file each, written against the backend interface only.

Families: ``gradient`` (input gradients and modified backward rules), ``layer``
(attributions to an intermediate tensor), ``cam`` (class activation maps),
``perturbation`` (occlusion, ablation, RISE, mask optimisation) and ``surrogate``
(LIME, Kernel SHAP, Shapley value sampling), ``lrp`` (relevance propagation) and
``global_views`` (activation maximisation, DGN-AM, deconvnet top-k, attention gates).
"""

from onnxplain.methods.base import Attribution
from onnxplain.methods.cam import (
    CAM,
    AblationCAM,
    CAMBase,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from onnxplain.methods.global_views import DGNAM, ActivationMaximization, AttentionMaps, DeconvnetTopK
from onnxplain.methods.gradient import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    RectGrad,
    Saliency,
    SmoothGrad,
)
from onnxplain.methods.layer import LayerActivation, LayerGradientXActivation, LayerIntegratedGradients
from onnxplain.methods.lrp import LRP, ContrastiveLRP, DeepTaylor, SoftmaxGradientLRP
from onnxplain.methods.perturbation import (
    RISE,
    ExtremalPerturbation,
    FeatureAblation,
    MeaningfulPerturbation,
    Occlusion,
)
from onnxplain.methods.surrogate import KernelShap, Lime, ShapleyValueSampling, SurrogateFit

__all__ = [
    "CAM",
    "DGNAM",
    "LRP",
    "RISE",
    "AblationCAM",
    "ActivationMaximization",
    "AttentionMaps",
    "Attribution",
    "CAMBase",
    "ContrastiveLRP",
    "Deconvolution",
    "DeconvnetTopK",
    "DeepTaylor",
    "EigenCAM",
    "ExtremalPerturbation",
    "FeatureAblation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "LayerActivation",
    "LayerCAM",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "Lime",
    "MeaningfulPerturbation",
    "NoiseTunnel",
    "Occlusion",
    "RectGrad",
    "Saliency",
    "ScoreCAM",
    "ShapleyValueSampling",
    "SmoothGrad",
    "SmoothGradCAMPlusPlus",
    "SoftmaxGradientLRP",
    "SurrogateFit",
    "XGradCAM",
]
