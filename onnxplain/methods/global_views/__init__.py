"""Global, unit-level views of a model: what a neuron, channel or class responds to
(activation maximisation, DGN-AM, the deconvnet's top-k patches), and the model's own
attention gates (squeeze-and-excitation, CBAM) read as maps.
"""

from onnxplain.methods.global_views.activation_maximization import ActivationMaximization, OptimizedImages
from onnxplain.methods.global_views.attention_maps import AttentionMaps
from onnxplain.methods.global_views.deconvnet_topk import DeconvnetTopK, TopKPatches
from onnxplain.methods.global_views.dgn_am import DGNAM, DGNAMResult

__all__ = [
    "DGNAM",
    "ActivationMaximization",
    "AttentionMaps",
    "DGNAMResult",
    "DeconvnetTopK",
    "OptimizedImages",
    "TopKPatches",
]
