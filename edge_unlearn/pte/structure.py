"""The gate's structural proof on an ExecuTorch program (``.pte``), read from the ``forward`` method's kernel calls
and constants and from the XNNPACK delegate's own graph (decoded with the flatc and schema executorch ships).

The same chain as the ONNX export (:mod:`edge_unlearn.deploy.structure`), with the mask outside every delegate::

    input -> [XNNPACK delegate: backbone -> head XNNFullyConnected (constant filter [R, D], R = C - k)
        -> [XNNConvert]] -> floor aten::where(aten::gt(r, L), r, L) -> aten::constant_pad_nd(+1 column = fill)
        -> aten::index_select(dim 1, constant index map [C]) -> output

L (through a ``_clone_dim_order`` of a constant), the fill and the index map must be program constants (not written
by any instruction); anything else -- the mask inside a delegate, another backend, a second input or output, an
op between the head and the floor -- raises :class:`~edge_unlearn.deploy.structure.StructureError` ("cannot prove
the mask"). The checks themselves are :func:`~edge_unlearn.deploy.structure.proof_checks`, shared with the ONNX
gate. Needs executorch (its deserializer); no torch import here.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.deploy.structure import (
    Check,
    MaskStructure,
    StructureError,
    cast_through,
    is_floor_constant,
    proof_checks,
)
from edge_unlearn.errors import ModelFileError

#: ExecuTorch ScalarType code -> numpy type
DTYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32, 7: np.float64}
_NO_VALUE = 0xFFFFFFFF


def _fail(message: str, check: str = "mask_structure") -> StructureError:
    return StructureError(check, f"cannot prove the mask in the .pte program: {message}")


def xnnpack_graph(payload: bytes) -> dict[str, Any]:
    """An XNNPACK delegate payload (XNNHeader + XNNGraph flatbuffer) as the schema's JSON tree."""
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader, _get_schema_bytes
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(payload[: XNNHeader.EXPECTED_LENGTH])
    if not header.is_valid() or header.flatbuffer_offset + header.flatbuffer_size > len(payload):
        raise _fail("its XNNPACK delegate has no valid XNNPACK header")
    graph = payload[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size]
    with tempfile.TemporaryDirectory() as folder:
        schema, binary = Path(folder, "schema.fbs"), Path(folder, "graph.bin")
        schema.write_bytes(_get_schema_bytes())
        binary.write_bytes(graph)
        try:
            _flatc_decompile(folder, str(schema), str(binary), ["--raw-binary"])
            text = Path(folder, "graph.json").read_text()
        except Exception as exc:  # noqa: BLE001 - flatc exits non-zero on a damaged buffer
            raise _fail(f"its XNNPACK graph cannot be decoded ({type(exc).__name__})") from exc
    text = re.sub(r"(?<=[:\[,\s])(-?)inf\b", r"\1Infinity", text).replace(": nan", ": NaN")
    return json.loads(text)


def _tensor_info(value: dict[str, Any]) -> dict[str, Any]:
    union = value.get("xvalue_union") or {}
    return union.get("tensor_value", union)


class _Program:
    """The forward method's values, producers (out arguments), constants and taint."""

    def __init__(self, program: Any) -> None:
        from .runner import FORWARD, plan

        self.program = program
        method = plan(program, FORWARD)
        if method is None:
            raise _fail(f"it has no single method {FORWARD!r}")
        if len(method.inputs) != 1 or len(method.outputs) != 1:
            raise _fail(f"it has {len(method.inputs)} inputs and {len(method.outputs)} outputs, not one of each")
        if len(method.chains) != 1:
            raise _fail(f"its forward method has {len(method.chains)} chains (control flow)")
        self.method = method
        self.values = method.values
        self.output = int(method.outputs[0])
        self.producer: dict[int, tuple[str, Any, list[int]]] = {}  # value -> (op name, instruction, its outputs)
        self.graphs: dict[int, dict[str, Any]] = {}
        self.tainted = {int(method.inputs[0])}
        for instruction in method.chains[0].instructions:
            call = instruction.instr_args
            kind = type(call).__name__
            if kind == "KernelCall":
                op = method.operators[call.op_index]
                name = f"{op.name}.{op.overload}"
                args = [int(a) for a in call.args]
                outs = args[-1:]  # out variants: (inputs..., out, returned out)
                ins = args[:-2] if len(args) >= 2 and args[-1] == args[-2] else args[:-1]
            elif kind == "DelegateCall":
                delegate = method.delegates[call.delegate_index]
                if delegate.id != "XnnpackBackend":
                    raise _fail(f"it holds a {delegate.id} delegate; an edge-unlearn program has XNNPACK only")
                graph = self._graph(delegate)
                self.graphs[call.delegate_index] = graph
                count = len(graph.get("output_ids") or [])
                args = [int(a) for a in call.args]
                if count < 1 or count > len(args):
                    raise _fail("an XNNPACK delegate call does not match its graph's outputs")
                name, ins, outs = f"delegate {call.delegate_index}", args[:-count], args[-count:]
            else:
                raise _fail(f"it has a {kind} instruction (control flow or moves); cannot analyse it")
            for out in outs:
                if out in self.producer:
                    raise _fail(f"value {out} is written twice")
                self.producer[out] = (name, call, ins)
            if any(i in self.tainted for i in ins):
                self.tainted.update(outs)

    def _graph(self, delegate: Any) -> dict[str, Any]:
        processed = delegate.processed
        if processed.location != 0 or processed.index >= len(self.program.backend_delegate_data):
            raise _fail("its XNNPACK delegate's data is not inline in the program")
        return xnnpack_graph(bytes(self.program.backend_delegate_data[processed.index].data))

    def constant(self, index: int) -> np.ndarray | None:
        """The value of a program constant (never written by an instruction), through ``_clone_dim_order``."""
        from .runner import constant_tensor

        if index in self.tainted:
            return None
        found = self.producer.get(index)
        if found is not None:
            name, _, ins = found
            return self.constant(ins[0]) if name.startswith("dim_order_ops::_clone_dim_order") and ins else None
        value = self.values[index].val
        kind = type(value).__name__
        if kind == "Double":
            return np.asarray(value.double_val, np.float64)
        if kind == "Int":
            return np.asarray(value.int_val, np.int64)
        if kind == "IntList":
            items = [self.constant(int(i)) for i in value.items]
            return None if any(i is None for i in items) else np.asarray([int(i) for i in items], np.int64)
        return constant_tensor(self.program, self.values[index])

    def op(self, index: int, *names: str) -> tuple[str, list[int]]:
        found = self.producer.get(index)
        if found is None or not any(found[0].startswith(n) for n in names):
            raise _fail(f"value {index} is produced by {found[0] if found else 'nothing'}, not {' / '.join(names)}")
        return found[0], found[2]


def analyse_pte(program: Any, meta: Any) -> MaskStructure:
    """Prove the mask chain of a deserialized program against ``meta``; StructureError when it cannot."""
    p = _Program(program)
    gather, (source, dim, index_at) = _expect(p, p.output, "aten::index_select", 3)
    index = p.constant(index_at)
    axis = p.constant(dim)
    if index is None or index.ndim != 1 or index.dtype.kind not in "iu":
        raise _fail(f"{gather} does not read a constant 1-D index map", "index_map")
    if axis is None or int(axis) not in (1, -1):
        raise _fail(f"{gather} is not along the class axis (dim 1)")
    pad, (floored, pads_at, fill_at) = _expect(p, source, "aten::constant_pad_nd", 3)
    pads, fill = p.constant(pads_at), p.constant(fill_at)
    if pads is None or [int(v) for v in pads.ravel()] != [0, 1]:
        raise _fail(f"{pad} is not a constant pad of one column")
    if fill is None or fill.size != 1 or fill.dtype.kind != "f":
        raise _fail(f"{pad} has no constant scalar float fill value", "fill_value")
    select, (test_at, retained, floor_at) = _expect(p, floored, "aten::where", 3)
    floor = p.constant(floor_at)
    test, test_ins = p.op(test_at, "aten::gt")
    bound = p.constant(test_ins[1]) if len(test_ins) == 2 else None
    if test_ins[:1] != [retained] or not is_floor_constant(floor, bound):
        raise _fail(f"{select} is not the floor where(gt(r, L), r, L) with one finite constant L")
    head, width = _head(p, retained)
    others = tuple(
        f"XNNFullyConnected in delegate {d}"
        for d, graph in p.graphs.items()
        for node, filt in _fully_connected(graph)
        if node is not head and filt and int(filt[0]) == meta.num_classes
    )
    out_type = DTYPES.get(int(getattr(p.values[p.output].val.scalar_type, "value", 6)), np.float32)
    floor_f = float(floor.ravel()[0])
    return MaskStructure(
        "XNNFullyConnected (XNNPACK delegate)",
        width,
        float(np.float32(fill.ravel()[0])),
        tuple(int(v) for v in index),
        pad,
        gather,
        floor_f,
        cast_through(floor_f, np.float32, [out_type]),
        cast_through(float(fill.ravel()[0]), np.float32, [out_type]),
        others,
    )


def _expect(p: _Program, index: int, name: str, count: int) -> tuple[str, list[int]]:
    op, ins = p.op(index, name)
    if len(ins) != count:
        raise _fail(f"{op} has {len(ins)} operands, not {count}")
    return op, ins


def _fully_connected(graph: dict[str, Any]) -> list[tuple[dict[str, Any], list[int]]]:
    values = graph.get("xvalues") or []
    found = []
    for node in graph.get("xnodes") or []:
        if node.get("xnode_union_type") == "XNNFullyConnected":
            filter_id = int(node["xnode_union"]["filter_id"])
            dims = _tensor_info(values[filter_id]).get("dims") if filter_id < len(values) else None
            found.append((node, [int(d) for d in dims or []]))
    return found


def _head(p: _Program, retained: int) -> tuple[dict[str, Any], int]:
    """(the head node, its width R) inside the delegate that writes the retained logits ``retained``."""
    found = p.producer.get(retained)
    if found is None or not found[0].startswith("delegate "):
        raise _fail(f"the floor does not read an XNNPACK delegate's output (found {found and found[0]})")
    _, call, _ = found
    graph = p.graphs[call.delegate_index]
    args = [int(a) for a in call.args]
    outputs = [int(v) for v in graph.get("output_ids") or []]
    slot = args.index(retained) - (len(args) - len(outputs))
    values = graph.get("xvalues") or []
    producers = {
        int(node["xnode_union"]["output_id"]): node
        for node in graph.get("xnodes") or []
        if "output_id" in (node.get("xnode_union") or {})
    }
    target = outputs[slot]
    for _ in range(16):
        node = producers.get(target)
        kind = node and node.get("xnode_union_type")
        if kind == "XNNConvert":
            target = int(node["xnode_union"]["input_id"])
            continue
        if kind != "XNNFullyConnected":
            raise _fail(f"{kind or 'nothing'} sits between the head and the floor in the delegate; cannot analyse it")
        union = node["xnode_union"]
        filt = _tensor_info(values[int(union["filter_id"])]) if int(union["filter_id"]) < len(values) else {}
        bias = int(union.get("bias_id", _NO_VALUE))
        constant = int(filt.get("constant_buffer_idx", 0)) != 0
        bias_ok = bias == _NO_VALUE or (
            bias < len(values) and int(_tensor_info(values[bias]).get("constant_buffer_idx", 0)) != 0
        )
        dims = [int(d) for d in filt.get("dims") or []]
        if not constant or len(dims) != 2 or not bias_ok:
            raise _fail("the head's filter or bias in the XNNPACK delegate is not a constant 2-D tensor")
        return node, dims[0]  # XNNPACK fully-connected filters are [out, in]
    raise _fail("the chain from the floor back to the head is too long to analyse")


def pte_static_checks(program: Any, meta: Any, where: str) -> list[Check]:
    """The gate's static checks of a ``.pte`` program; ModelFileError (exit 2) when it cannot prove the mask."""
    try:
        found = analyse_pte(program, meta)
    except StructureError as exc:
        raise ModelFileError(f"{where}: {exc}; deploy only a .pte written by `edge-unlearn convert`") from exc
    return proof_checks(found, meta)
