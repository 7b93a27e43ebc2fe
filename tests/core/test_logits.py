"""Models that output probabilities: gradient and CAM methods explain the pre-softmax logit.

The Softmax-terminated model is the test CNN followed by ``nn.Softmax(dim=1)``; its
pre-softmax tensor is the logits model's output, so by default every gradient and CAM
method must give the logits model's result (tolerance 1e-5 relative) and say so in
``last_metadata``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import max_rel_err, small_cnn
from torch import nn

import onnxplain as ox


@pytest.fixture(scope="module")
def models():
    net = small_cnn()
    x = torch.randn(2, 3, 32, 32)
    plain = ox.adapters.torch.export(net, x, exporter="legacy")
    soft = ox.adapters.torch.export(nn.Sequential(net, nn.Softmax(dim=1)).eval(), x, exporter="legacy")
    logsoft = ox.adapters.torch.export(nn.Sequential(net, nn.LogSoftmax(dim=1)).eval(), x, exporter="legacy")
    return plain, soft, logsoft


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32)


def test_logits_names_the_pre_softmax_tensor(models):
    plain, soft, logsoft = models
    assert plain.logits() is None
    for model in (soft, logsoft):
        name = model.logits()
        assert name is not None and name != model.output_name
        assert model.find_layer(name).op_type == "Gemm"


def test_gradcam_uses_the_logit_by_default_and_says_so(models, x):
    plain, soft, _ = models
    method = ox.GradCAM(soft)
    cam = method.attribute(x, target=[1, 3])
    assert method.last_metadata["logits"] is True
    assert method.last_metadata["output"] == soft.logits()
    assert method.last_metadata["model_output"] == soft.output_name
    assert max_rel_err(cam, ox.GradCAM(plain).attribute(x, target=[1, 3])) < 1e-5
    opted_out = ox.GradCAM(soft, use_logits=False)
    prob_cam = opted_out.attribute(x, target=[1, 3])
    assert opted_out.last_metadata == {**method.last_metadata, "output": soft.output_name, "logits": False}
    assert max_rel_err(prob_cam, cam) > 1e-2  # the probability's gradient is another map


def test_every_gradient_and_cam_method_defaults_to_the_logit(models, x):
    plain, soft, logsoft = models
    for model in (soft, logsoft):
        for make, kwargs in [
            (ox.Saliency, {}),
            (ox.IntegratedGradients, {"n_steps": 8}),
            (ox.GuidedBackprop, {}),
            (ox.GradCAMPlusPlus, {}),
            (ox.CAM, {}),
            (ox.AblationCAM, {}),
            (ox.ScoreCAM, {}),  # weighting="probability": softmax of the logit = the output
        ]:
            ours = make(model).attribute(x, target=2, **kwargs)
            ref = make(plain).attribute(x, target=2, **kwargs)
            assert max_rel_err(ours, ref) < 1e-5, make.__name__


def test_perturbation_methods_explain_the_output_unless_asked(models, x):
    plain, soft, _ = models
    kwargs = dict(target=0, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8))
    occ = ox.Occlusion(soft)
    probs = occ.attribute(x, **kwargs)
    assert occ.last_metadata["logits"] is False and occ.last_metadata["output"] == soft.output_name
    with torch.no_grad():
        assert not np.allclose(probs, ox.Occlusion(plain).attribute(x, **kwargs))
    on_logits = ox.Occlusion(soft, use_logits=True).attribute(x, **kwargs)
    np.testing.assert_allclose(on_logits, ox.Occlusion(plain).attribute(x, **kwargs), atol=1e-5)
    with pytest.raises(ox.InputValidationError, match="use_logits"):
        ox.Occlusion(soft, use_logits="yes")
