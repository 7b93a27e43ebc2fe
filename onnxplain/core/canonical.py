"""Canonicalisation: make any exporter's ONNX graph uniform before anything else sees it.

Each pass fixes one habit of a real exporter (measured on torch's two exporters, Paddle,
tf2onnx): local functions, weights behind ``Identity`` or ``Constant`` nodes, initializers
listed as graph inputs, ``Reshape(allowzero=1)`` where no zero is in the shape, dead
nodes, missing shapes, duplicate or empty names. Nothing that changes the computation:
BatchNorm and activations stay separate nodes, so rules and layer boundaries survive.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as passes

logger = logging.getLogger(__name__)


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # pragma: no cover - exotic tensor types
        return None


class NormalizeReshapeAllowZeroPass(ir.passes.InPlacePass):
    """Drop ``allowzero=1`` from Reshape nodes whose constant shape has no zero.

    With no zero in the shape, ``allowzero`` has no effect; torch's dynamo exporter
    sets it everywhere, and onnx2torch refuses it.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
                continue
            attr = node.attributes.get("allowzero")
            if attr is None or attr.as_int() == 0:
                continue
            shape = _const_array(node.inputs[1] if len(node.inputs) > 1 else None)
            if shape is not None and not (shape == 0).any():
                node.attributes.pop("allowzero")
                modified = True
        return ir.passes.PassResult(model, modified=modified)


def _safe(pass_: ir.passes.PassBase, model: ir.Model) -> ir.Model:
    try:
        return pass_(model).model
    except Exception as exc:  # a pass that cannot handle a graph must not block loading
        logger.warning("canonicalisation pass %s skipped: %s", type(pass_).__name__, exc)
        return model


def canonicalize(model: ir.Model) -> ir.Model:
    """Run the canonicalisation passes in order; returns the (in-place) modified model."""
    steps: list[ir.passes.PassBase] = [
        passes.InlinePass(),
        passes.RemoveInitializersFromInputsPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.IdentityEliminationPass(),
        NormalizeReshapeAllowZeroPass(),
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedFunctionsPass(),
        passes.TopologicalSortPass(),
        passes.NameFixPass(),
        passes.ShapeInferencePass(strict_mode=False),
    ]
    for step in steps:
        model = _safe(step, model)
    return model
