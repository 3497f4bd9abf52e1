"""The gate's structural proof on an OpenVINO IR (``.xml`` + ``.bin``), read from ``Model.get_ordered_ops()``.

The same chain as the ONNX export (:mod:`edge_unlearn.deploy.structure`), in OpenVINO's opset, as
``openvino.convert_model`` writes it and NNCF's INT8 leaves it::

    Parameter -> backbone -> head MatMul (constant weight, R = C - k columns) -> [FakeQuantize, Convert,
        constant bias/scale] -> floor Select(Greater(r, L), r, L) -> Pad(+1 column = fill) -> Gather(axis 1,
        index map [C]) -> [Convert to float] -> Result

Every operand other than the chain itself (weight, bias, L, fill, pads, index map) must be free of the input
(a taint walk from the one Parameter), so every path from the image to the output passes through the head.
A graph that is not that chain -- stateful variables, control flow, a second input, another op on the chain --
raises :class:`~edge_unlearn.deploy.structure.StructureError` ("cannot prove the mask"): never passes by default.
The checks themselves are :func:`~edge_unlearn.deploy.structure.proof_checks`, shared with the ONNX gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_unlearn.errors import ModelFileError

from .structure import Check, MaskStructure, StructureError, cast_through, is_floor_constant, proof_checks

#: OpenVINO element types a Convert may produce on the chain -> numpy type
_FLOAT_TYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64}
#: elementwise ops that may join a constant (bias, scale) between the head and the floor
_ELEMENTWISE = ("Add", "Multiply", "Subtract", "Divide")
#: ops whose presence anywhere makes the graph's output depend on more than the image
_REFUSED = ("ReadValue", "Assign", "If", "Loop", "TensorIterator")


def _fail(message: str, check: str = "mask_structure") -> StructureError:
    return StructureError(check, f"cannot prove the mask in the OpenVINO IR: {message}")


def _label(node: Any) -> str:
    return f"{node.get_type_name()} {node.get_friendly_name()!r}"


def _source(node: Any, port: int) -> Any:
    return node.input(port).get_source_output().get_node()


def _element(node: Any) -> str:
    return node.get_output_element_type(0).get_type_name()


@dataclass(frozen=True)
class IrMask:
    """The proven chain, and the names of its ops after the head (what NNCF must leave in float)."""

    structure: MaskStructure
    mask_ops: tuple[str, ...]


class _Ir:
    """The model's ops by instance id, and which depend on the Parameter (the taint)."""

    def __init__(self, model: Any) -> None:
        self.ops = list(model.get_ordered_ops())
        refused = [op for op in self.ops if op.get_type_name() in _REFUSED]
        if refused:
            raise _fail(f"{_label(refused[0])} makes the output depend on state or control flow")
        params = model.get_parameters()
        if len(params) != 1:
            raise _fail(f"the model has {len(params)} inputs, not the one image input")
        self.tainted: set[int] = set()
        for op in self.ops:  # topological order
            if op.get_type_name() == "Parameter" or any(
                _source(op, i).get_instance_id() in self.tainted for i in range(op.get_input_size())
            ):
                self.tainted.add(op.get_instance_id())

    def is_tainted(self, node: Any) -> bool:
        return node.get_instance_id() in self.tainted

    def value(self, node: Any) -> np.ndarray | None:
        """The exact value of an input-free Constant, through Converts (FP16 weight compression); else None."""
        casts = []
        while node.get_type_name() == "Convert" and not self.is_tainted(node):
            casts.append(_FLOAT_TYPES.get(_element(node)) or np.dtype(node.get_output_element_type(0).to_dtype()))
            node = _source(node, 0)
        if node.get_type_name() != "Constant":
            return None
        out = np.asarray(node.get_data())
        for to in reversed(casts):
            out = out.astype(to)
        return out


def _skip_converts(node: Any, casts: list[type]) -> Any:
    """The first producer that is not a Convert (recording the float types converted to)."""
    while node.get_type_name() == "Convert":
        to = _FLOAT_TYPES.get(_element(node))
        if to is None:
            raise _fail(f"{_label(node)} converts the logits to {_element(node)}, not a float type")
        casts.append(to)
        node = _source(node, 0)
    return node


def _result(model: Any, output_name: str) -> Any:
    for result in model.get_results():
        if output_name in result.input(0).get_source_output().get_names():
            return result
    names = [sorted(o.get_names()) for o in model.outputs]
    raise _fail(f"the model has no output {output_name!r} (outputs: {names})")


def _head_width(head: Any) -> int | None:
    shape = head.input(1).get_partial_shape()
    if not shape.is_static or len(shape) != 2:
        return None
    transposed = bool(head.get_attributes().get("transpose_b", False))
    return int(shape.to_shape()[0] if transposed else shape.to_shape()[1])


def analyse_ir(model: Any, meta: Any) -> IrMask:
    """Prove the mask chain of an ``openvino.Model`` against ``meta``'s names; StructureError when it cannot."""
    ir = _Ir(model)
    out_casts: list[type] = []
    gather = _skip_converts(_source(_result(model, meta.output_name), 0), out_casts)
    if gather.get_type_name() != "Gather" or gather.get_input_size() != 3:
        raise _fail(f"the output is not produced by the class-index Gather (found {_label(gather)})")
    index, axis = ir.value(_source(gather, 1)), ir.value(_source(gather, 2))
    if index is None or index.ndim != 1 or index.dtype.kind not in "iu":
        raise _fail(f"{_label(gather)} does not read a constant 1-D index map", "index_map")
    if (
        axis is None
        or axis.size != 1
        or int(axis.ravel()[0]) not in (1, -1)
        or gather.get_attributes().get("batch_dims", 0)
    ):
        raise _fail(f"{_label(gather)} is not along the class axis (axis 1)")
    pad_casts: list[type] = []
    pad = _skip_converts(_source(gather, 0), pad_casts)
    if pad.get_type_name() != "Pad" or pad.get_input_size() not in (3, 4):
        raise _fail(f"the Gather does not read a Pad of the head's logits (found {_label(pad)})")
    begin, end = ir.value(_source(pad, 1)), ir.value(_source(pad, 2))
    if (
        str(pad.get_attributes().get("pad_mode", "")).lower() != "constant"
        or begin is None
        or end is None
        or [int(v) for v in begin.ravel()] != [0, 0]
        or [int(v) for v in end.ravel()] != [0, 1]
    ):
        raise _fail(f"{_label(pad)} is not a constant pad of one column")
    fill = ir.value(_source(pad, 3)) if pad.get_input_size() == 4 else np.zeros((), np.float32)
    if fill is None or fill.size != 1 or fill.dtype.kind != "f":
        raise _fail(f"{_label(pad)} has no constant scalar float fill value", "fill_value")
    floor_casts: list[type] = []
    select = _skip_converts(_source(pad, 0), floor_casts)
    floor, retained = _floor(ir, select)
    head, chain = _walk_to_head(ir, retained)
    width = _head_width(head)
    if width is None or ir.is_tainted(_source(head, 1)):
        raise _fail(f"the weight of head {_label(head)} is not a constant 2-D tensor; cannot read its width")
    ancestors = _ancestors(gather)
    others = tuple(
        _label(op)
        for op in ir.ops
        if op.get_type_name() == "MatMul"
        and op.get_instance_id() != head.get_instance_id()
        and op.get_instance_id() in ancestors
        and not ir.is_tainted(_source(op, 1))
        and _head_width(op) == meta.num_classes
    )
    fill_type = fill.dtype.type
    tail = pad_casts[::-1] + out_casts[::-1]
    structure = MaskStructure(
        head.get_friendly_name(),
        width,
        float(np.float32(fill.ravel()[0])),
        tuple(int(v) for v in index),
        pad.get_friendly_name(),
        gather.get_friendly_name(),
        float(floor.ravel()[0]),
        cast_through(float(floor.ravel()[0]), floor.dtype.type, floor_casts[::-1] + [fill_type] + tail),
        cast_through(float(fill.ravel()[0]), fill_type, tail),
        others,
    )
    after_head = [*chain, select, _source(select, 0), pad, gather]
    return IrMask(structure, tuple(dict.fromkeys(op.get_friendly_name() for op in after_head)))


def _floor(ir: _Ir, select: Any) -> tuple[np.ndarray, Any]:
    """(L, the retained logits' producer) of the floor ``Select(Greater(r, L), r, L)``."""
    if select.get_type_name() != "Select":
        raise _fail(
            f"the Pad does not read the floor Select(Greater(r, L), r, L) (found {_label(select)}); re-export "
            "the model with this version of `edge-unlearn export`"
        )
    test = _source(select, 0)
    floor, bound = ir.value(_source(select, 2)), ir.value(_source(test, 1)) if test.get_input_size() == 2 else None
    then = select.input(1).get_source_output()
    if (
        test.get_type_name() != "Greater"
        or test.input(0).get_source_output() != then
        or not is_floor_constant(floor, bound)
    ):
        raise _fail(f"{_label(select)} is not the floor Select(Greater(r, L), r, L) with one finite constant L")
    return floor, then.get_node()


def _walk_to_head(ir: _Ir, node: Any) -> tuple[Any, list[Any]]:
    """From the floor's input back to the head MatMul; every operand joining on the way must be input-free."""
    chain: list[Any] = []
    for _ in range(64):
        kind = node.get_type_name()
        if kind == "MatMul":
            if not ir.is_tainted(_source(node, 0)):
                raise _fail(f"the head {_label(node)} does not read the backbone")
            return node, chain
        chain.append(node)
        if kind == "Convert":
            if _element(node) not in _FLOAT_TYPES:
                raise _fail(f"{_label(node)} converts the logits to {_element(node)}")
            node = _source(node, 0)
        elif kind == "FakeQuantize":
            if any(ir.is_tainted(_source(node, i)) for i in range(1, node.get_input_size())):
                raise _fail(f"the ranges of {_label(node)} after the head are computed from the input")
            node = _source(node, 0)
        elif kind in _ELEMENTWISE and node.get_input_size() == 2:
            first, second = _source(node, 0), _source(node, 1)
            if ir.is_tainted(first) == ir.is_tainted(second):
                raise _fail(f"{_label(node)} after the head joins a second tensor computed from the input")
            if kind in ("Subtract", "Divide") and not ir.is_tainted(first):
                raise _fail(f"{_label(node)} after the head inverts the logits")
            node = first if ir.is_tainted(first) else second
        else:
            raise _fail(f"{_label(node)} sits between the head and the floor; cannot analyse the head")
    raise _fail("the chain from the mask back to the head is too long to analyse")


def _ancestors(node: Any) -> set[int]:
    seen: set[int] = set()
    stack = [node]
    while stack:
        op = stack.pop()
        if op.get_instance_id() in seen:
            continue
        seen.add(op.get_instance_id())
        stack.extend(_source(op, i) for i in range(op.get_input_size()))
    return seen


def ir_static_checks(model: Any, meta: Any, where: str) -> list[Check]:
    """The gate's static checks of an ``openvino.Model`` against ``meta``; ModelFileError (exit 2) for an IR whose
    mask it cannot prove, as for ONNX."""
    try:
        found = analyse_ir(model, meta).structure
    except StructureError as exc:
        raise ModelFileError(f"{where}: {exc}; deploy only an IR written by `edge-unlearn convert`") from exc
    return proof_checks(found, meta)
