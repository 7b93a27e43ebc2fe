"""Surrogate methods: fit an interpretable model to the network's responses to coalitions
of features (LIME), or estimate Shapley values from them (Kernel SHAP, permutation
sampling). Forward passes only, so they explain any ONNX model: CNNs, and also
scikit-learn or gradient-boosting models exported with skl2onnx."""

from onnxplain.methods.surrogate.base import SurrogateAttribution, SurrogateFit
from onnxplain.methods.surrogate.kernel_shap import KernelShap
from onnxplain.methods.surrogate.lime import Lime
from onnxplain.methods.surrogate.shapley_value_sampling import ShapleyValueSampling

__all__ = ["KernelShap", "Lime", "ShapleyValueSampling", "SurrogateAttribution", "SurrogateFit"]
