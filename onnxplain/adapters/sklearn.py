"""Export a scikit-learn estimator or pipeline on flattened images (skl2onnx) as an image model.

scikit-learn models take feature vectors; an image classifier made with them was trained
on images flattened to ``x.reshape(n, -1)``. The exported graph is loaded with
``load(..., image_shape=...)``, which puts a ``Flatten`` in front of it, so that the
:class:`Model` takes the images themselves, and explanations come back image-shaped.
skl2onnx emits ``ai.onnx.ml`` operators (``Scaler``, ``LinearClassifier``, ...) that only
ONNX Runtime runs: forward-only methods (Occlusion, RISE, KernelShap, Lime, ...) apply; a
gradient method either runs (the pipeline became plain ONNX operators, e.g. an MLP) or
raises :class:`~onnxplain.BackendCapabilityError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxplain.adapters._common import (
    as_example,
    check_rtol,
    first_line,
    keep_output,
    require,
    verified_model,
)
from onnxplain.core.errors import ExportError, InputValidationError
from onnxplain.core.layout import check_image_shape, check_layout
from onnxplain.core.model import Model

_INPUT = "input"  # the images; the Flatten in front of the graph gives its features


def _final_estimator(estimator: Any) -> Any:
    return getattr(estimator, "_final_estimator", estimator)


def export(
    estimator: Any,
    image_shape: Sequence[int],
    example: Any,
    output: str | None = None,
    opset: int | None = None,
    rtol: float = 1e-4,
    layout: str = "auto",
) -> Model:
    """Export a fitted scikit-learn ``estimator`` that classifies flattened images.

    Parameters
    ----------
    estimator : sklearn estimator or Pipeline
        Fitted on ``images.reshape(n, -1)`` (C-order flattening of ``image_shape``).
    image_shape : sequence of int
        The shape of one image as it was flattened for training: (C, H, W), (H, W, C) with
        ``layout="NHWC"``, or (H, W) for one-channel images; the :class:`Model` takes
        (N, *image_shape).
    example : array-like
        Images (N, *image_shape), N ≥ 1, to check the export on:
        max |Δ| ≤ ``rtol`` × max |output| against ``predict_proba`` (classifiers) or
        ``predict``, else :class:`~onnxplain.ExportError`.
    output : str, optional
        The graph output to keep; by default a classifier's probabilities (skl2onnx's
        ``"probabilities"``, no ZipMap) or a regressor's ``"variable"``. Every other
        output (e.g. the int64 label) is dropped.
    opset : int, optional
        Target opset of the default domain (skl2onnx's newest otherwise).
    rtol : float
        Tolerance of the check, relative to the largest output (scikit-learn computes in
        float64, the export in float32).
    layout : str
        ``"auto"`` or ``"NCHW"``: a 3-axis ``image_shape`` is (C, H, W); ``"NHWC"``: it is
        (H, W, C), and the model takes and returns channels-last arrays (see
        :func:`onnxplain.load`).

    Needs ``pip install onnxplain[sklearn]`` (scikit-learn and skl2onnx).

    Examples
    --------
    >>> import numpy as np, onnxplain as ox
    >>> from sklearn.linear_model import LogisticRegression
    >>> images, labels, _ = ox.examples.shapes_dataset(24, seed=5)
    >>> small = images[:, :, ::8, ::8]  # (24, 3, 8, 8)
    >>> clf = LogisticRegression(max_iter=200).fit(small.reshape(24, -1), labels)
    >>> model = ox.adapters.sklearn.export(clf, image_shape=(3, 8, 8), example=small[:4])
    >>> model.predict(small[:2]).shape == (2, len(clf.classes_))
    True
    """
    require("sklearn", "sklearn", "scikit-learn")
    skl2onnx = require("skl2onnx", "sklearn", "skl2onnx (the scikit-learn to ONNX converter)")
    from onnx import TensorProto
    from sklearn.base import is_classifier

    if not hasattr(estimator, "predict"):
        raise InputValidationError(
            f"export() takes a fitted scikit-learn estimator or Pipeline, got {type(estimator).__name__}"
        )
    shape = check_image_shape(image_shape if image_shape is not None else ())  # load's own check
    layout = check_layout(layout) or ("NHW" if len(shape) == 2 else "NCHW")
    if (layout == "NHW") != (len(shape) == 2):
        raise InputValidationError(f"layout={layout!r} does not fit image_shape={shape}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise InputValidationError(f"opset must be an int ≥ 7 or None, got {opset!r}")
    rtol = check_rtol(rtol)
    x = as_example(example)
    if x.shape[1:] != shape:
        raise InputValidationError(
            f"example must be images of shape (N, *image_shape) = (N, {', '.join(map(str, shape))}), "
            f"got {x.shape}"
        )
    features = int(np.prod(shape))
    flat = x.reshape(len(x), features)
    n_in = getattr(estimator, "n_features_in_", features)
    if n_in != features:
        raise InputValidationError(
            f"the estimator was fitted on {n_in} features, but image_shape {shape} has {features}"
        )
    final = _final_estimator(estimator)
    classifier = is_classifier(final)
    if classifier and not hasattr(estimator, "predict_proba"):
        raise InputValidationError(
            f"{type(final).__name__} has no predict_proba, so there are no class scores to explain "
            "(e.g. SVC needs probability=True)"
        )
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(final): {"zipmap": False}} if classifier else None
    try:
        proto = skl2onnx.convert_sklearn(
            estimator,
            initial_types=[(_INPUT, FloatTensorType([None, features]))],
            target_opset=opset,
            options=options,
        )
    except Exception as exc:
        raise ExportError(
            f"skl2onnx could not convert {type(estimator).__name__}: {first_line(exc)}"
        ) from exc
    names = [o.name for o in proto.graph.output]
    if output is None:
        wanted = "probabilities" if classifier else "variable"
        output = (
            wanted
            if wanted in names
            else next(
                (
                    o.name
                    for o in proto.graph.output
                    if o.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE)
                ),
                names[0],
            )
        )
    proto = keep_output(proto, output)
    if classifier and output == "probabilities":
        expected = estimator.predict_proba(flat)
    else:
        expected = np.asarray(estimator.predict(flat), dtype=np.float64)
    return verified_model(proto, x, expected, rtol, f"skl2onnx ({type(estimator).__name__})",
                          image_shape=shape, layout=layout)
