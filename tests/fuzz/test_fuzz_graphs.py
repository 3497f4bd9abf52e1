"""Property-based graph mutations of our deployment graph (issue #30): a random node spliced in after the head, a
random initializer also declared as a graph input, a random mask constant replaced by a tensor computed from the
input. The gate must never pass such a graph: `validate` exits 1 or 2 (never 0), `build-engine --check-only`
exits non-zero, and neither prints a traceback. Bounded and derandomized like the rest of the fuzz suite."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from .conftest import assert_clean_exit, invoke_cli

GRAPHS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: the chain from the head to the output, as (node name of the reader, input index it reads the chain on)
SPLICE_POINTS = [
    ("edge_unlearn_mask/above_floor", 0),  # between the head and the floor (both floor readers)
    ("edge_unlearn_mask/fill", 0),  # between the floor and the Pad
    ("edge_unlearn_mask/scatter", 0),  # between the Pad and the Gather
    ("__output__", 0),  # after the Gather
]
#: unary ops the gate does not allow on the chain (each changes which class wins for some input)
UNARY = ["Relu", "Neg", "Abs", "Sigmoid", "Exp", "Tanh", "Floor", "Softsign"]
#: binary ops whose second operand is computed from the input (a side branch joining the chain)
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


def _splice(model: onnx.ModelProto, point: tuple[str, int], node_for) -> None:
    """Insert ``node_for(src, dst)`` on the chain at ``point``: its readers read ``dst`` instead of ``src``."""
    name, _ = point
    if name == "__output__":
        gather = next(n for n in model.graph.node if n.name == "edge_unlearn_mask/scatter")
        gather.output[0] = "pre_output"
        model.graph.node.extend(node_for("pre_output", "logits"))
        return
    reader = next(n for n in model.graph.node if n.name == name)
    src = reader.input[0]
    readers = [n for n in model.graph.node if src in n.input]
    if name == "edge_unlearn_mask/above_floor":  # the floor reads the head output twice: splice both
        readers = [n for n in readers if n.name.startswith("edge_unlearn_mask/")]
    else:
        readers = [reader]
    for node in readers:
        node.input[:] = ["spliced" if i == src else i for i in node.input]
    model.graph.node.extend(node_for(src, "spliced"))


def _side_branch() -> list:
    """A tensor computed from the input: the mean pixel [B, 1], broadcastable to [B, columns]."""
    return [
        helper.make_node("ReduceMean", ["input"], ["side_mean"], axes=[1, 2, 3], keepdims=1, name="side/mean"),
        helper.make_node("Flatten", ["side_mean"], ["side"], axis=1, name="side/flatten"),
    ]


def _save(model: onnx.ModelProto, work) -> object:
    from edge_unlearn.deploy.onnx_meta import topological_sort

    topological_sort(model)
    path = work / "m.onnx"
    onnx.save(model, str(path))
    return path


def _assert_gate_refuses(path, bundle, work) -> None:
    before = {p.name for p in work.iterdir()}
    code, out, err = invoke_cli(["validate", path, "--bundle", bundle, "--json", work / "v.json"])
    assert_clean_exit(code, out, err, before, work)
    assert code in (1, 2), (code, out[-800:], err)
    code, out, err = invoke_cli(["build-engine", "--check-only", path])
    assert code in (1, 2) and "Traceback" not in out + err, (code, out[-800:], err)


@GRAPHS
@given(
    point=st.sampled_from(SPLICE_POINTS),
    unary=st.none() | st.sampled_from(UNARY),
    binary=st.sampled_from(BINARY),
    reverse=st.booleans(),
)
def test_a_node_spliced_after_the_head_never_passes(base, tmp_path_factory, point, unary, binary, reverse):
    work = tmp_path_factory.mktemp("splice")
    model = onnx.load(str(base.onnx))

    def node_for(src: str, dst: str) -> list:
        if unary is not None:
            return [helper.make_node(unary, [src], [dst], name="spliced/unary")]
        operands = ["side", src] if reverse else [src, "side"]
        return [*_side_branch(), helper.make_node(binary, operands, [dst], name="spliced/binary")]

    _splice(model, point, node_for)
    _assert_gate_refuses(_save(model, work), base.bundle, work)


@GRAPHS
@given(index=st.integers(0, 1 << 16))
def test_an_initializer_declared_as_a_graph_input_never_passes(base, tmp_path_factory, index):
    work = tmp_path_factory.mktemp("override")
    model = onnx.load(str(base.onnx))
    init = model.graph.initializer[index % len(model.graph.initializer)]
    model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    _assert_gate_refuses(_save(model, work), base.bundle, work)


MASK_CONSTANTS = [
    "edge_unlearn_mask_value",
    "edge_unlearn_retained_floor",
    "edge_unlearn_class_index",
    "edge_unlearn_mask_pads",
    "head.weight",
    "head.bias",
]


@GRAPHS
@given(name=st.sampled_from(MASK_CONSTANTS), scale=st.sampled_from([0.0, 1.0, -1.0, 1e6]))
def test_a_constant_computed_from_the_input_never_passes(base, tmp_path_factory, name, scale):
    """A mask constant or head parameter replaced by constant + scale * f(input), the same value on ordinary
    inputs when scale is 0: the gate refuses on where the value comes from, not on what it is."""
    work = tmp_path_factory.mktemp("computed")
    model = onnx.load(str(base.onnx))
    init = next(i for i in model.graph.initializer if i.name == name)
    value = numpy_helper.to_array(init)
    cast_to = TensorProto.INT64 if value.dtype.kind == "i" else TensorProto.FLOAT
    nodes = [
        *_side_branch(),
        helper.make_node("ReduceMax", ["side"], ["side_max"], keepdims=0, name="side/max"),
        helper.make_node("Mul", ["side_max", "side_scale"], ["side_scaled"], name="side/scale"),
        helper.make_node("Cast", ["side_scaled"], ["side_cast"], to=cast_to, name="side/cast"),
        helper.make_node("Add", [name, "side_cast"], ["computed"], name="side/add"),
    ]
    for node in model.graph.node:
        node.input[:] = ["computed" if i == name else i for i in node.input]
    model.graph.node.extend(nodes)
    model.graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), "side_scale"))
    _assert_gate_refuses(_save(model, work), base.bundle, work)
