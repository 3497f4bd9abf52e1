"""The gate's structural proof on a LiteRT flatbuffer (``.tflite``), read from its operators and tensors.

The same chain as the ONNX export (:mod:`edge_unlearn.deploy.structure`), in TFLite's builtin ops::

    input -> backbone -> head FULLY_CONNECTED (constant weight [R, D], R = C - k) -> [QUANTIZE/DEQUANTIZE,
        constant bias/scale] -> floor SELECT(_V2)(GREATER(r, L), r, L) -> PAD(V2)(+1 column = fill)
        -> GATHER(axis 1, index map [C]) -> [CAST to float] -> output

Every operand other than the chain (weight, L, fill, paddings, index map) must be a constant buffer (not computed
from the input: a taint walk over the operators), so every path from the image to the output passes through the
head. Anything else -- several subgraphs, custom ops on the chain, a second input -- raises
:class:`~edge_unlearn.deploy.structure.StructureError` ("cannot prove the mask"). The checks themselves are
:func:`~edge_unlearn.deploy.structure.proof_checks`, shared with the ONNX gate. Pure numpy + the flatbuffer schema.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_unlearn.errors import ModelFileError

from .structure import Check, MaskStructure, StructureError, cast_through, is_floor_constant, proof_checks

#: TFLite TensorType code -> numpy type (the codes of schema.fbs)
_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8, 10: np.float64}
_FLOATS = (np.float32, np.float16, np.float64)
_ELEMENTWISE = ("ADD", "MUL", "SUB", "DIV")


def _fail(message: str, check: str = "mask_structure") -> StructureError:
    return StructureError(check, f"cannot prove the mask in the .tflite file: {message}")


class _Tflite:
    """Subgraph 0's tensors, constants, producers and taint."""

    def __init__(self, model: Any) -> None:
        from .runners_litert import schema

        fb = schema()
        names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        self.codes = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]
        if len(model.subgraphs) != 1:
            raise _fail(f"it has {len(model.subgraphs)} subgraphs (control flow); an edge-unlearn model has one")
        graph = model.subgraphs[0]
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise _fail(f"it has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs, not one of each")
        self.tensors, self.buffers = graph.tensors, model.buffers
        self.ops = list(graph.operators)
        self.output = int(graph.outputs[0])
        self.producer: dict[int, Any] = {}
        self.tainted = {int(graph.inputs[0])}
        for op in self.ops:  # TFLite stores operators in execution order
            for out in op.outputs:
                if int(out) in self.producer:
                    raise _fail(f"tensor {self.name(out)!r} is written twice")
                self.producer[int(out)] = op
            if any(int(i) in self.tainted for i in op.inputs if i >= 0):
                self.tainted.update(int(o) for o in op.outputs)
        if any(self.kind(op) in ("CALL_ONCE", "VAR_HANDLE", "ASSIGN_VARIABLE", "READ_VARIABLE") for op in self.ops):
            raise _fail("it holds resource variables (state)")

    def kind(self, op: Any) -> str:
        return self.codes[op.opcodeIndex]

    def name(self, index: int) -> str:
        raw = self.tensors[index].name
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def label(self, op: Any) -> str:
        return f"{self.kind(op)} -> {self.name(op.outputs[0]).rsplit('/', 1)[-1]!r}"

    def dtype(self, index: int) -> type:
        return _TYPES.get(self.tensors[index].type, np.uint8)

    def value(self, index: int) -> np.ndarray | None:
        """The value of a constant tensor (a buffer with data), through DEQUANTIZE/CAST of constants."""
        if index < 0 or index in self.tainted:
            return None
        tensor = self.tensors[index]
        data = self.buffers[tensor.buffer].data if tensor.buffer < len(self.buffers) else None
        if data is not None and len(data):
            shape = [int(v) for v in tensor.shape] if tensor.shape is not None else []
            return np.frombuffer(np.asarray(data, np.uint8).tobytes(), self.dtype(index)).reshape(shape)
        op = self.producer.get(index)
        if op is not None and self.kind(op) in ("DEQUANTIZE", "CAST"):
            inner = self.value(int(op.inputs[0]))
            return None if inner is None else inner.astype(self.dtype(index))
        return None

    def skip(self, index: int, casts: list[type]) -> Any:
        """The producer of ``index``, past float CASTs (recording their types)."""
        op = self.producer.get(index)
        while op is not None and self.kind(op) == "CAST":
            to = self.dtype(int(op.outputs[0]))
            if to not in _FLOATS:
                raise _fail(f"{self.label(op)} casts the logits to a non-float type")
            casts.append(to)
            op = self.producer.get(int(op.inputs[0]))
        return op


def analyse_tflite(model: Any, meta: Any) -> MaskStructure:
    """Prove the mask chain of a ``ModelT`` against ``meta``; StructureError when it cannot."""
    g = _Tflite(model)
    out_casts: list[type] = []
    gather, index, source = _class_gather(g, g.skip(g.output, out_casts))
    pad_casts: list[type] = []
    pad = g.skip(source, pad_casts)
    if pad is None or g.kind(pad) not in ("PAD", "PADV2"):
        raise _fail(f"the GATHER does not read a PAD of the head's logits (found {pad and g.label(pad)})")
    paddings = g.value(int(pad.inputs[1]))
    if paddings is None or [int(v) for v in paddings.ravel()] != [0, 0, 0, 1]:
        raise _fail(f"{g.label(pad)} is not a constant pad of one column")
    fill = g.value(int(pad.inputs[2])) if g.kind(pad) == "PADV2" else np.zeros((), g.dtype(int(pad.inputs[0])))
    if fill is None or fill.size != 1 or fill.dtype.kind != "f":
        raise _fail(f"{g.label(pad)} has no constant scalar float fill value", "fill_value")
    floor_casts: list[type] = []
    select = g.skip(int(pad.inputs[0]), floor_casts)
    floor, retained = _floor(g, select)
    head = _walk_to_head(g, retained)
    weight = g.value(int(head.inputs[1])) if len(head.inputs) > 1 else None
    if weight is None:
        shape = g.tensors[int(head.inputs[1])].shape if len(head.inputs) > 1 else None
        if int(head.inputs[1]) in g.tainted or shape is None or len(shape) != 2:
            raise _fail(f"the weight of head {g.label(head)} is not a constant 2-D tensor")
        width = int(shape[0])
    else:
        if weight.ndim != 2:
            raise _fail(f"the weight of head {g.label(head)} is not 2-D")
        width = int(weight.shape[0])  # FULLY_CONNECTED weights are [out, in]
    ancestors = _ancestors(g, int(gather.outputs[0]))
    others = tuple(
        g.label(op)
        for op in g.ops
        if g.kind(op) == "FULLY_CONNECTED"
        and op is not head
        and int(op.outputs[0]) in ancestors
        and int(op.inputs[1]) not in g.tainted
        and g.tensors[int(op.inputs[1])].shape is not None
        and int(g.tensors[int(op.inputs[1])].shape[0]) == meta.num_classes
    )
    tail = pad_casts[::-1] + out_casts[::-1]
    fill_type = fill.dtype.type
    return MaskStructure(
        g.label(head),
        width,
        float(np.float32(fill.ravel()[0])),
        tuple(int(v) for v in index),
        g.label(pad),
        g.label(gather),
        float(floor.ravel()[0]),
        cast_through(float(floor.ravel()[0]), floor.dtype.type, floor_casts[::-1] + [fill_type] + tail),
        cast_through(float(fill.ravel()[0]), fill_type, tail),
        others,
    )


def _transpose_2d(g: _Tflite, op: Any) -> bool:
    """A 2-D transpose: TRANSPOSE(perm [1, 0]), or at a static batch of 1 the RESHAPE [1, n] <-> [n, 1] the
    converter writes for it."""
    if op is None or g.kind(op) not in ("TRANSPOSE", "RESHAPE") or len(op.inputs) < 2:
        return False
    if g.kind(op) == "TRANSPOSE":
        perm = g.value(int(op.inputs[1]))
        return perm is not None and [int(v) for v in perm.ravel()] == [1, 0]
    source, target = g.tensors[int(op.inputs[0])].shape, g.tensors[int(op.outputs[0])].shape
    if source is None or target is None or len(source) != 2 or len(target) != 2:
        return False
    dims, shape = [int(v) for v in source], [int(v) for v in target]
    return 1 in dims and shape == dims[::-1] and int(op.inputs[1]) not in g.tainted


def _class_gather(g: _Tflite, op: Any) -> tuple[Any, np.ndarray, int]:
    """(the gather op, the index map, the gathered tensor) of ``GATHER(x, index, axis=1)`` or of the form the
    converter lowers ``index_select(x, 1, index)`` to: ``TRANSPOSE(GATHER_ND(TRANSPOSE(x), index[:, None]))``."""
    if op is not None and g.kind(op) == "GATHER":
        index = g.value(int(op.inputs[1]))
        if index is None or index.ndim != 1 or index.dtype.kind not in "iu":
            raise _fail(f"{g.label(op)} does not read a constant 1-D index map", "index_map")
        options = op.builtinOptions
        if getattr(options, "axis", 0) not in (1, -1) or getattr(options, "batchDims", 0):
            raise _fail(f"{g.label(op)} is not along the class axis (axis 1)")
        return op, index, int(op.inputs[0])
    inner = g.producer.get(int(op.inputs[0])) if _transpose_2d(g, op) else None
    if inner is not None and g.kind(inner) == "GATHER_ND":
        index = g.value(int(inner.inputs[1]))
        first = g.producer.get(int(inner.inputs[0]))
        if index is None or index.ndim != 2 or index.shape[1] != 1 or index.dtype.kind not in "iu":
            raise _fail(f"{g.label(inner)} does not read a constant [C, 1] index map", "index_map")
        if not _transpose_2d(g, first):
            raise _fail(f"{g.label(inner)} does not gather the transposed logits")
        return inner, index[:, 0], int(first.inputs[0])
    raise _fail(f"the output is not produced by the class-index GATHER (found {op and g.label(op)})")


def _floor(g: _Tflite, select: Any) -> tuple[np.ndarray, int]:
    """(L, the retained logits' tensor) of the floor ``SELECT(GREATER(r, L), r, L)``."""
    if select is None or g.kind(select) not in ("SELECT", "SELECT_V2"):
        found = select and g.label(select)
        raise _fail(f"the PAD does not read the floor SELECT(GREATER(r, L), r, L) (found {found})")
    test = g.producer.get(int(select.inputs[0]))
    retained = int(select.inputs[1])
    floor = g.value(int(select.inputs[2]))
    bound = g.value(int(test.inputs[1])) if test is not None and len(test.inputs) == 2 else None
    if (
        test is None
        or g.kind(test) != "GREATER"
        or int(test.inputs[0]) != retained
        or not is_floor_constant(floor, bound)
    ):
        raise _fail(f"{g.label(select)} is not the floor SELECT(GREATER(r, L), r, L) with one finite constant L")
    return floor, retained


def _walk_to_head(g: _Tflite, index: int) -> Any:
    for _ in range(64):
        op = g.producer.get(index)
        if op is None:
            raise _fail("no head layer between the input and the floor")
        kind = g.kind(op)
        if kind == "FULLY_CONNECTED":
            if int(op.inputs[0]) not in g.tainted:
                raise _fail(f"the head {g.label(op)} does not read the backbone")
            if len(op.inputs) > 2 and int(op.inputs[2]) >= 0 and int(op.inputs[2]) in g.tainted:
                raise _fail(f"the bias of head {g.label(op)} is computed from the input")
            return op
        if kind in ("QUANTIZE", "DEQUANTIZE", "CAST"):
            index = int(op.inputs[0])
        elif kind in _ELEMENTWISE and len(op.inputs) == 2:
            first, second = (int(i) for i in op.inputs)
            if (first in g.tainted) == (second in g.tainted):
                raise _fail(f"{g.label(op)} after the head joins a second tensor computed from the input")
            if kind in ("SUB", "DIV") and first not in g.tainted:
                raise _fail(f"{g.label(op)} after the head inverts the logits")
            index = first if first in g.tainted else second
        else:
            raise _fail(f"{g.label(op)} sits between the head and the floor; cannot analyse the head")
    raise _fail("the chain from the mask back to the head is too long to analyse")


def _ancestors(g: _Tflite, index: int) -> set[int]:
    seen: set[int] = set()
    stack = [index]
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        op = g.producer.get(tensor)
        if op is not None:
            stack.extend(int(i) for i in op.inputs if i >= 0)
    return seen


def tflite_static_checks(model: Any, meta: Any, where: str) -> list[Check]:
    """The gate's static checks of a ``.tflite`` (``ModelT``); ModelFileError (exit 2) when it cannot prove the
    mask, as for ONNX."""
    try:
        found = analyse_tflite(model, meta)
    except StructureError as exc:
        raise ModelFileError(f"{where}: {exc}; deploy only a .tflite written by `edge-unlearn convert`") from exc
    return proof_checks(found, meta)
