"""Canonical tensor names for exported graphs (calibration ranges are keyed by them): hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from shopclip.models.engines.onnx_names import canonicalize  # noqa: E402


def _graph(names: list[str], order: list[int], const_name: str):
    """y = relu(x * c) + (x + c), with x * c computed twice; intermediate names and node order as given."""
    c = numpy_helper.from_array(np.full((3,), 2.0, np.float32), const_name)
    w = numpy_helper.from_array(np.arange(3, dtype=np.float32), "tower.scale.weight")
    m1, m2, r, a, s = names
    nodes = [
        helper.make_node("Mul", ["x", const_name], [m1]),
        helper.make_node("Mul", ["x", const_name], [m2]),  # the same computation again
        helper.make_node("Relu", [m1], [r]),
        helper.make_node("Add", ["x", const_name], [a]),
        helper.make_node("Sum", [r, a, m2, "tower.scale.weight"], [s]),
        helper.make_node("Identity", [s], ["y"]),
    ]
    g = helper.make_graph([nodes[i] for i in order], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [c, w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


def test_the_same_computation_gets_the_same_names_whatever_the_export_called_it():
    a = _graph(["mul_1", "mul_2", "relu_3", "add_4", "sum_5"], [0, 1, 2, 3, 4, 5], "val_7")
    b = _graph(["mul_495", "mul_9", "val_12", "add_535", "t"], [3, 1, 0, 2, 4, 5], "val_589")
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    want = np.maximum(x * 2, 0) + (x + 2) + x * 2 + np.arange(3)
    np.testing.assert_allclose(_run(a, x), want, rtol=1e-6)
    ra, rb = canonicalize(a), canonicalize(b)
    assert [n.output[0] for n in a.graph.node] == [n.output[0] for n in b.graph.node]
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    # the duplicate Mul is merged into one node; both old names map to it
    assert [n.op_type for n in a.graph.node].count("Mul") == 1 and ra["mul_1"] == ra["mul_2"] == rb["mul_495"]
    # inputs, outputs and parameters keep their names; the anonymous constant is named by content
    assert {i.name for i in a.graph.initializer} == {"tower.scale.weight", ra["val_7"]}
    assert ra["val_7"] == rb["val_589"] and "x" not in ra and "y" not in ra
    onnx.checker.check_model(a)
    np.testing.assert_allclose(_run(a, x), want, rtol=1e-6)
    np.testing.assert_allclose(_run(b, x), want, rtol=1e-6)


def test_a_different_computation_gets_a_different_name():
    a = _graph(["m1", "m2", "r", "a", "s"], [0, 1, 2, 3, 4, 5], "k")
    b = _graph(["m1", "m2", "r", "a", "s"], [0, 1, 2, 3, 4, 5], "k")
    b.graph.node[2].op_type = "Sigmoid"
    ra, rb = canonicalize(a), canonicalize(b)
    assert ra["m1"] == rb["m1"] and ra["r"] != rb["r"] and ra["s"] != rb["s"]  # it changes everything downstream


def test_a_cycle_is_refused():
    m = _graph(["m1", "m2", "r", "a", "s"], [0, 1, 2, 3, 4, 5], "k")
    m.graph.node[0].input[0] = "s"  # Mul now reads the Sum it feeds
    with pytest.raises(ValueError, match="cycle"):
        canonicalize(m)
