"""Layer-wise relevance propagation: rules, composites, LRP, deep Taylor decomposition,
contrastive LRP and softmax-gradient LRP, on the graph IR (see
:mod:`onnxplain.methods.lrp.composites`)."""

from onnxplain.methods.lrp.composites import (
    Composite,
    DeepTaylorComposite,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    Select,
)
from onnxplain.methods.lrp.contrastive_lrp import ContrastiveLRP
from onnxplain.methods.lrp.deep_taylor import DeepTaylor
from onnxplain.methods.lrp.lrp import LRP
from onnxplain.methods.lrp.rules import (
    LRP0,
    Alpha1Beta0,
    Alpha2Beta1,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gate,
    Gradient,
    Norm,
    Pass,
    Rule,
    Uniform,
    WinnerTakeAll,
    WSquare,
    ZBox,
    ZPlus,
)
from onnxplain.methods.lrp.softmax_gradient_lrp import SoftmaxGradientLRP

__all__ = [
    "LRP",
    "LRP0",
    "Alpha1Beta0",
    "Alpha2Beta1",
    "AlphaBeta",
    "Composite",
    "ContrastiveLRP",
    "DeepTaylor",
    "DeepTaylorComposite",
    "Epsilon",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "Flat",
    "Gamma",
    "Gate",
    "Gradient",
    "Norm",
    "Pass",
    "Rule",
    "Select",
    "SoftmaxGradientLRP",
    "Uniform",
    "WSquare",
    "WinnerTakeAll",
    "ZBox",
    "ZPlus",
]
