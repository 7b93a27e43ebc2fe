"""Two-operand Einsums that are matrix products load as MatMuls (CvT's attention, dense
layers written as einsum), with the same values; other equations stay Einsums."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.core.canonical import EinsumAsMatMulPass

RNG = np.random.default_rng(0)


def _graph(equation: str, x_shape: tuple, other_shape: tuple, other_is_weight: bool):
    """input (N, 2, 4, 6) → reshape to ``x_shape`` → Einsum(x, other) → flatten → mean over
    the last axis: one input, one (N, k) output. ``other``: a constant weight, or ``x``
    itself reshaped (both operands computed, as attention's Q·Kᵀ)."""
    nodes = [helper.make_node("Reshape", ["input", "xs"], ["x"])]
    inits = [numpy_helper.from_array(np.array(x_shape, np.int64), "xs")]
    if other_is_weight:
        inits.append(numpy_helper.from_array(RNG.standard_normal(other_shape).astype(np.float32), "w"))
    else:
        nodes.append(helper.make_node("Reshape", ["input", "os"], ["w"]))
        inits.append(numpy_helper.from_array(np.array(other_shape, np.int64), "os"))
    nodes += [
        helper.make_node("Einsum", ["x", "w"], ["e"], name="einsum", equation=equation),
        helper.make_node("Flatten", ["e"], ["f"], axis=1),
        helper.make_node("ReduceMean", ["f"], ["output"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 2, 4, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


CASES = [  # equation, x's shape, the other operand's shape, is the other a weight, rewritten
    ("bhlk,bhtk->bhlt", (2, 2, 4, 6), (2, 2, 4, 6), False, True),   # CvT: Q·Kᵀ
    ("bhlt,bhtv->bhlv", (2, 2, 4, 6), (2, 2, 6, 4), False, True),   # CvT: A·V
    ("bld,dk->blk", (2, 8, 6), (6, 5), True, True),                  # a dense layer
    ("bld,kd->bkl", (2, 8, 6), (5, 6), True, True),                  # transposed weight and output
    ("blk,bhk->bhl", (2, 8, 6), (2, 8, 6), False, True),             # batch letter, other order
    ("abc,cde->abde", (2, 8, 6), (6, 3, 4), True, True),             # Keras: to attention heads
    ("abcd,cde->abe", (2, 8, 3, 2), (3, 2, 5), True, True),          # Keras: from attention heads
    ("abc,ced->adbe", (2, 8, 6), (6, 4, 3), True, True),             # a permuted weight and output
    ("...d,dk->...k", (2, 8, 6), (6, 5), True, False),               # ellipsis: left alone
    ("bld,bld->bl", (2, 8, 6), (2, 8, 6), False, False),             # no free letter in B
    ("bij,jj->bij", (2, 8, 6), (6, 6), True, False),                 # a repeated letter
]


@pytest.mark.parametrize("equation,x_shape,other_shape,weight,rewritten", CASES,
                         ids=[c[0] for c in CASES])
def test_matrix_product_einsums_load_as_matmuls_with_the_same_values(
    equation, x_shape, other_shape, weight, rewritten
):
    proto = _graph(equation, x_shape, other_shape, weight)
    x = RNG.standard_normal((2, 2, 4, 6)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    model = ox.load(proto)
    ops = [node.op_type for node in model.ir.graph]
    assert ("Einsum" not in ops and "MatMul" in ops) == rewritten, ops
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_the_plan_of_each_equation():
    """The permutations of A, of B and of the product to the output: None when refused."""
    plan = EinsumAsMatMulPass._plan
    assert plan("bhlk,bhtk->bhlt") == ([0, 1, 2, 3], [0, 1, 3, 2], [0, 1, 2, 3])
    assert plan("bld,kd->bkl") == ([0, 1, 2], [1, 0], [0, 2, 1])
    assert plan("ij,jk") is None  # implicit output
    assert plan("ij,jk,kl->il") is None  # three operands
    assert plan("ij,jk->i") is None  # k summed in B alone
    assert plan("bij,jk->ik") is None  # b summed in A alone


def test_lrp_through_a_dense_einsum_to_heads_is_lrp_through_its_matmul():
    """``abc,cde->abde`` by a constant weight (Keras' projection to attention heads under JAX
    and torch) is the MatMul by the weight as a (c, d·e) matrix, reshaped: LRP had no rule
    for the Einsum and refused; it now gives the MatMul's map (1e-6 of the maximum)."""
    weight = RNG.standard_normal((6, 3, 4)).astype(np.float32)
    head = RNG.standard_normal((12, 5)).astype(np.float32)

    def graph(einsum: bool):
        if einsum:
            dense = [helper.make_node("Einsum", ["x", "w"], ["h"], equation="abc,cde->abde")]
            inits = [numpy_helper.from_array(weight, "w")]
        else:
            dense = [helper.make_node("MatMul", ["x", "w2"], ["m"]),
                     helper.make_node("Reshape", ["m", "hs"], ["h"])]
            inits = [numpy_helper.from_array(weight.reshape(6, 12), "w2"),
                     numpy_helper.from_array(np.array([0, 0, 3, 4], np.int64), "hs")]
        nodes = [helper.make_node("Reshape", ["input", "xs"], ["x"]), *dense,
                 helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("ReduceMean", ["r"], ["p"], axes=[1], keepdims=0),
                 helper.make_node("Flatten", ["p"], ["f"], axis=1),
                 helper.make_node("MatMul", ["f", "head"], ["output"])]
        inits += [numpy_helper.from_array(np.array([2, 8, 6], np.int64), "xs"),
                  numpy_helper.from_array(head, "head")]
        g = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 2, 4, 6])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 5])], inits)
        return ox.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))

    x = RNG.standard_normal((2, 2, 4, 6)).astype(np.float32)
    ours, reference = (ox.LRP(graph(e)).attribute(x, target=2) for e in (True, False))
    assert np.abs(reference).max() > 0
    assert np.abs(ours - reference).max() <= 1e-6 * np.abs(reference).max()
