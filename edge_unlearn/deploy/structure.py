"""Structural proof that an exported graph forgets: what ``validate`` and ``build-engine --check-only`` check
beyond accuracy on natural images. Pure onnx + numpy (+ onnxruntime for the stress run); no torch.

An edge-unlearn export has a fixed shape (:func:`edge_unlearn.deploy.onnx_meta.mask_graph`)::

    input -> backbone -> head (Gemm/MatMul, R = C - k columns) -> [Q/DQ, cast, constant bias/scale]
        -> floor: Where(Greater(r, L), r, L) -> Pad(+1 column = fill) -> Gather(axis=1, index map [C])
        -> [Cast to float] -> output

What is *proven* from the graph, for every input (no input is tried): every retained output column is
>= L (a NaN retained logit becomes L, since NaN > L is false under IEEE-754), every forgotten column is the
constant fill, and L > fill in every float type on the way to the output; so a forgotten class is never the
argmax, ties and NaN included. The proof needs, and :func:`analyse_mask` refuses (``StructureError``, "cannot
prove ...") any graph without:

- one graph input (the image) and no initializer that is also a graph input (onnxruntime lets a caller override
  such an initializer at run time), no control-flow subgraphs;
- the chain above, every operand of it other than the chain itself (fill, index map, pads, L, bias, scales, zero
  points, the head's weight) free of the input: computed from initializers and Constant nodes only (a taint
  walk from the graph input and from every random op); the one exception is the dynamic-INT8 head, whose activation scale and zero point
  come from the DynamicQuantizeLinear that quantizes the head's own input (part of the head);
- every path from the graph input to the output passing through the head: nothing joins the chain after the head;
- every Quantize/DequantizeLinear of the graph with a constant scale and zero point.

Checks (each one is a :class:`Check`, named so a failure says which):

- ``mask_structure``: the chain above, proven (an unprovable graph raises instead; ``validate`` exits 2).
- ``head_rows``: the head's weight has R = C - k output columns, and no other linear layer with a constant
  C-column weight (the original head) feeds the output.
- ``index_map``: retained class i-th in order reads column i; every forgotten class reads the fill column.
- ``fill_value``: the graph's fill constant is finite and equals the declared ``mask_value``.
- ``retained_floor``: L - fill at the output's type, must be > 0 (the proof's last step).
- ``forgotten_columns_constant`` / ``fill_margin`` (measured): on the bundle and on stress inputs every forgotten
  output column equals the fill and the fill is below every retained logit; implied by the proof, kept as a
  check of the runtime that executes the graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_unlearn.errors import ModelFileError

#: ops that carry a tensor's columns unchanged between the head and the floor
_PASSTHROUGH = ("Identity", "Cast", "QuantizeLinear", "DequantizeLinear")
#: elementwise ops whose second operand is a bias, a scale or a dynamic-quantization scale
_ELEMENTWISE = ("Add", "Mul", "Sub", "Div")
#: linear ops that can be the head: op -> index of the weight input (the activation is input 0)
_LINEAR = {
    "Gemm": 1,
    "MatMul": 1,
    "FusedMatMul": 1,
    "QGemm": 3,
    "QLinearMatMul": 3,
    "MatMulInteger": 1,
    "MatMulIntegerToFloat": 1,
    "DynamicQuantizeMatMul": 1,
}
#: ops that only reshape or relabel a constant or a dynamic-quantization parameter
_SIDE_OPS = ("Mul", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze")
#: ops whose outputs change from run to run: treated like the input (never a constant)
_RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
#: float element types a Cast may produce on the way to the output: ONNX TensorProto code -> numpy type
_FLOAT_CASTS = {1: np.float32, 10: np.float16, 11: np.float64}
#: stress batch: how many images of each random kind
STRESS_RANDOM = 8
#: name of the check recorded when CPU onnxruntime cannot run the graph (a warning, not a failure, in check-only)
STRESS_NOT_RUN = "stress_run"


@dataclass(frozen=True)
class Check:
    """One criterion: ``value`` compared with ``threshold`` by ``op`` ('<=', '>=', '<', '>', '=='); None fails."""

    name: str
    value: float | None
    op: str
    threshold: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False
        compare = {
            "<=": lambda a, b: a <= b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            ">": lambda a, b: a > b,
            "==": lambda a, b: a == b,
        }.get(self.op)
        return bool(compare(self.value, self.threshold)) if compare else False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "threshold": self.threshold,
            "passed": self.passed,
            "detail": self.detail,
        }

    def line(self) -> str:
        value = "missing" if self.value is None else f"{self.value:.6g}"
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {value} {self.op} {self.threshold:g}" + (
            f"  ({self.detail})" if self.detail else ""
        )


class StructureError(Exception):
    """The graph is not a provable edge-unlearn mask chain; ``check`` names the check, the message says why."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message if message.startswith("cannot prove") else f"cannot prove the mask: {message}")
        self.check = check


def is_floor_constant(floor: np.ndarray | None, bound: np.ndarray | None) -> bool:
    """The floor's constants as every gate demands them: one finite float L, and the comparison's bound equal to
    it (``where(r > L, r, L)``), so no retained logit (NaN included) can fall below L."""
    return (
        floor is not None
        and bound is not None
        and floor.size == 1
        and bound.size == 1
        and floor.dtype.kind == "f"
        and bool(np.isfinite(floor).all())
        and float(bound.ravel()[0]) == float(floor.ravel()[0])
    )


@dataclass(frozen=True)
class MaskStructure:
    """What the graph says, read from the graph (not from the metadata)."""

    head_node: str
    head_width: int
    fill_value: float
    index_map: tuple[int, ...]
    pad_node: str
    gather_node: str
    #: the floor L on the retained logits, and L and the fill at the output's element type
    floor_value: float = float("nan")
    floor_at_output: float = float("nan")
    fill_at_output: float = float("nan")
    #: other linear layers feeding the output whose constant weight has as many columns as the model has classes
    full_width_layers: tuple[str, ...] = ()


def _constants(model: Any) -> dict[str, np.ndarray]:
    """Initializers that no caller can override (not also graph inputs) and Constant node outputs."""
    from onnx import numpy_helper

    inputs = {i.name for i in model.graph.input}
    out: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if init.name not in inputs:
            out[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_float", "value_int"):
                    out[node.output[0]] = np.asarray(attr.f if attr.name == "value_float" else attr.i)
                elif attr.name in ("value_floats", "value_ints"):
                    out[node.output[0]] = np.asarray(list(attr.floats if attr.name == "value_floats" else attr.ints))
    return out


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _label(node: Any) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


class _Graph:
    """The graph's producers, constants and the tensors that depend on the graph input (the taint)."""

    def __init__(self, model: Any, input_name: str) -> None:
        graph = model.graph
        initializers = {t.name for t in graph.initializer}
        overridable = sorted(initializers & {i.name for i in graph.input})
        if overridable:
            raise StructureError(
                "mask_structure",
                f"cannot prove the mask: initializer {overridable[0]!r} is also a graph input, so a caller can "
                "override it at run time (onnxruntime does); re-export the model with `edge-unlearn export`",
            )
        inputs = [i.name for i in graph.input]
        if inputs != [input_name]:
            raise StructureError(
                "mask_structure",
                f"cannot prove the mask: the graph's inputs are {inputs}, not the one image input {input_name!r}",
            )
        self.consts = _constants(model)
        self.producers: dict[str, Any] = {}
        for node in graph.node:
            if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
                raise StructureError(
                    "mask_structure", f"cannot prove the mask: {_label(node)} holds a subgraph (control flow)"
                )
            for out in node.output:
                if out and (out in self.producers or out in initializers or out == input_name):
                    raise StructureError("mask_structure", f"cannot prove the mask: tensor {out!r} is written twice")
                if out:
                    self.producers[out] = node
        self.tainted: set[str] = {input_name}  # plus every output of a random op: not a constant either
        self.tainted.update(o for n in graph.node if n.op_type in _RANDOM_OPS for o in n.output if o)
        defined = set(initializers) | {input_name, ""}
        pending = list(graph.node)
        while pending:  # in dependency order (onnxruntime runs a graph whose nodes are listed out of order)
            waiting = []
            for node in pending:
                if all(i in defined for i in node.input):
                    defined.update(node.output)
                    if any(i in self.tainted for i in node.input):
                        self.tainted.update(o for o in node.output if o)
                else:
                    waiting.append(node)
            if len(waiting) == len(pending):
                missing = next(i for i in waiting[0].input if i not in defined)
                raise StructureError(
                    "mask_structure",
                    f"cannot prove the mask: {_label(waiting[0])} reads {missing!r}, which nothing computes "
                    "(an undefined tensor or a cycle)",
                )
            pending = waiting
        self.outputs = [o.name for o in graph.output]

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is input-free, seen through Identity/Cast/DequantizeLinear/Transpose
        (values change there, the shape does not: only shapes are read through them)."""
        if name in self.tainted:
            return None
        if name in self.consts:
            return self.consts[name]
        node = self.producers.get(name)
        if node is None or node.op_type == "Constant":
            return None
        if node.op_type in ("Identity", "Cast", "DequantizeLinear"):
            return self.const(node.input[0])
        if node.op_type == "Transpose":
            inner = self.const(node.input[0])
            return None if inner is None else np.transpose(inner, _attr(node, "perm"))
        return None

    def value(self, name: str) -> np.ndarray | None:
        """The exact value of an input-free initializer or Constant (through Identity only)."""
        node = self.producers.get(name)
        while node is not None and node.op_type == "Identity" and name not in self.consts:
            name = node.input[0]
            node = self.producers.get(name)
        return None if name in self.tainted else self.consts.get(name)

    def side_ok(self, name: str, quantizer: Any, depth: int = 0) -> bool:
        """An operand that may join the chain after the head: input-free, or the scale / zero point of the
        head's own input quantizer (dynamic INT8), or a product / reshape of those."""
        if not name:
            return True
        if name not in self.tainted:
            return True
        node = self.producers.get(name)
        if node is None or depth > 8:
            return False
        if quantizer is not None and node is quantizer:
            return list(node.output).index(name) >= 1
        if node.op_type in _SIDE_OPS:
            return all(self.side_ok(i, quantizer, depth + 1) for i in node.input)
        return False

    def ancestors(self, name: str) -> set[str]:
        """The first output names of every node the tensor ``name`` depends on."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            node = self.producers.get(stack.pop())
            if node is None or node.output[0] in seen:
                continue
            seen.add(node.output[0])
            stack.extend(node.input)
        return seen


def _head_width(node: Any, graph: _Graph) -> int | None:
    index = _LINEAR[node.op_type]
    weight_name = node.input[index] if len(node.input) > index else ""
    weight = graph.const(weight_name)
    if weight is None or weight.ndim != 2:
        return None
    trans = bool(_attr(node, "transB", 0)) if node.op_type in ("Gemm", "QGemm", "FusedMatMul") else False
    return int(weight.shape[0] if trans else weight.shape[1])


def _skip(graph: _Graph, name: str, casts: list[type]) -> tuple[Any, str]:
    """The first producer of ``name`` that is not an Identity or a float Cast (recording the casts' types)."""
    node = graph.producers.get(name)
    while node is not None and node.op_type in ("Identity", "Cast"):
        if node.op_type == "Cast":
            to = _FLOAT_CASTS.get(int(_attr(node, "to", 0)))
            if to is None:
                raise StructureError(
                    "mask_structure", f"cannot prove the mask: {_label(node)} casts the logits to a non-float type"
                )
            casts.append(to)
        name = node.input[0]
        node = graph.producers.get(name)
    return node, name


def cast_through(value: float, start: type, casts: list[type]) -> float:
    """``value`` held in ``start``, then cast through ``casts`` (innermost first), as a float."""
    out = np.asarray(value).astype(start)
    for to in casts:
        out = out.astype(to)
    return float(out)


def _check_qdq_constant(graph: _Graph, model: Any) -> None:
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for name in node.input[1:]:
                if name and name in graph.tainted:
                    raise StructureError(
                        "mask_structure",
                        f"cannot prove the mask: the scale or zero point {name!r} of {_label(node)} is computed "
                        "from the input",
                    )


def analyse_mask(
    model: Any, output_name: str, input_name: str = "input", num_classes: int | None = None
) -> MaskStructure:
    """Prove the mask chain from the graph (see the module docstring); :class:`StructureError` when it cannot."""
    graph = _Graph(model, input_name)
    if output_name not in graph.outputs:
        raise StructureError("mask_structure", f"the graph has no output {output_name!r} (outputs: {graph.outputs})")
    _check_qdq_constant(graph, model)
    out_casts: list[type] = []
    gather, _ = _skip(graph, output_name, out_casts)
    if gather is None or gather.op_type != "Gather":
        raise StructureError(
            "mask_structure",
            f"output {output_name!r} is not produced by the class-index Gather "
            f"(found {gather.op_type if gather else 'a graph input'})",
        )
    index = graph.value(gather.input[1]) if len(gather.input) > 1 else None
    if index is None or index.ndim != 1 or index.dtype.kind not in "iu":
        raise StructureError(
            "index_map", f"Gather {gather.name!r} does not read a constant 1-D index map that no caller can override"
        )
    if int(_attr(gather, "axis", 0)) not in (1, -1):
        raise StructureError("mask_structure", f"Gather {gather.name!r} is not along the class axis (axis 1)")
    pad_casts: list[type] = []
    pad, _ = _skip(graph, gather.input[0], pad_casts)
    if pad is None or pad.op_type != "Pad":
        raise StructureError("mask_structure", f"the Gather {gather.name!r} does not read a Pad of the head's logits")
    mode = _attr(pad, "mode", b"constant")
    pads = graph.value(pad.input[1]) if len(pad.input) > 1 else None
    if (
        mode not in (b"constant", "constant")
        or pads is None
        or len(pad.input) > 3
        or [int(v) for v in np.ravel(pads)] != [0, 0, 0, 1]
    ):
        raise StructureError(
            "mask_structure",
            f"Pad {pad.name!r} is not a constant pad of one column "
            f"(pads {None if pads is None else np.ravel(pads).tolist()})",
        )
    fill = graph.value(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros((), np.float32)
    if fill is None or fill.size != 1 or fill.dtype.kind != "f":
        raise StructureError(
            "fill_value", f"Pad {pad.name!r} has no constant scalar float fill value that no caller can override"
        )
    floor_casts: list[type] = []
    where, retained = _skip(graph, pad.input[0], floor_casts)
    floor = _floor(graph, where)
    fill_type, floor_type = fill.dtype.type, floor.dtype.type
    fill_out = cast_through(float(fill.ravel()[0]), fill_type, pad_casts[::-1] + out_casts[::-1])
    floor_out = cast_through(
        float(floor.ravel()[0]), floor_type, floor_casts[::-1] + [fill_type] + pad_casts[::-1] + out_casts[::-1]
    )
    head, quantizer = _walk_to_head(graph, where.input[1])
    width = _head_width(head, graph)
    if width is None:
        raise StructureError(
            "mask_structure",
            f"the weight of head {_label(head)} is not a constant 2-D tensor (or is computed from the input); "
            "cannot read the head's width",
        )
    others: list[str] = []
    if num_classes is not None:
        ancestors = graph.ancestors(output_name)
        others = [
            _label(n)
            for n in model.graph.node
            if n.output[0] != head.output[0]
            and n.op_type in _LINEAR
            and n.output[0] in ancestors
            and _head_width(n, graph) == num_classes
        ]
    return MaskStructure(
        head.name or head.op_type,
        width,
        float(np.float32(fill.ravel()[0])),
        tuple(int(v) for v in index),
        pad.name,
        gather.name,
        float(floor.ravel()[0]),
        floor_out,
        fill_out,
        tuple(others),
    )


def _floor(graph: _Graph, where: Any) -> np.ndarray:
    """L of the floor node ``Where(Greater(r, L), r, L)``; StructureError when ``where`` is not that."""
    if where is None or where.op_type != "Where" or len(where.input) != 3:
        found = "a graph input" if where is None else _label(where)
        raise StructureError(
            "mask_structure",
            f"cannot prove the mask: the Pad does not read the floor Where(Greater(r, L), r, L) on the retained "
            f"logits (found {found}); without it an input could push every retained logit below the fill or to "
            "NaN. Re-export the model with this version of `edge-unlearn export` (then quantize it again)",
        )
    test = graph.producers.get(where.input[0])
    floor = graph.value(where.input[2])
    bound = graph.value(test.input[1]) if test is not None and len(test.input) == 2 else None
    if (
        test is None
        or test.op_type != "Greater"
        or test.input[0] != where.input[1]
        or not is_floor_constant(floor, bound)
        or bound.dtype != floor.dtype
    ):
        raise StructureError(
            "mask_structure",
            f"cannot prove the mask: {_label(where)} is not the floor Where(Greater(r, L), r, L) with one finite "
            "constant L that no caller can override",
        )
    return floor


def _walk_to_head(graph: _Graph, name: str) -> tuple[Any, Any]:
    """From the floor's input back to the head; every operand that joins on the way must be input-free (or the
    head's own dynamic quantization parameters). Returns (head node, its input's DynamicQuantizeLinear or None)."""
    joined: list[tuple[str, Any]] = []
    for _ in range(64):
        node = graph.producers.get(name)
        if node is None:
            raise StructureError("mask_structure", "no head layer between the graph input and the floor")
        if node.op_type in _LINEAR:
            head = node
            activation = head.input[0]
            if activation not in graph.tainted:
                raise StructureError("mask_structure", f"the head {_label(head)} does not read the backbone")
            source = graph.producers.get(activation)
            quantizer = source if source is not None and source.op_type == "DynamicQuantizeLinear" else None
            weight_index = _LINEAR[head.op_type]
            for i, operand in enumerate(head.input[1:], 1):
                if i == weight_index or not graph.side_ok(operand, quantizer):
                    if operand and operand in graph.tainted:
                        raise StructureError(
                            "mask_structure",
                            f"cannot prove the mask: operand {operand!r} of head {_label(head)} is computed from the "
                            "input (only the head's activation may be)",
                        )
            for operand, at in joined:
                if not graph.side_ok(operand, quantizer):
                    raise StructureError(
                        "mask_structure",
                        f"cannot prove the mask: {_label(at)} after the head joins {operand!r}, which is computed "
                        "from the input: a branch that bypasses the head re-enters after it",
                    )
            return head, quantizer
        if node.op_type in _PASSTHROUGH:
            joined.extend((i, node) for i in node.input[1:])
            name = node.input[0]
        elif node.op_type in _ELEMENTWISE and len(node.input) == 2:
            first, second = node.input
            main = first if first in graph.tainted else second
            other = second if main == first else first
            if node.op_type in ("Sub", "Div") and main != first:
                raise StructureError(
                    "mask_structure", f"cannot prove the mask: {_label(node)} after the head inverts the logits"
                )
            joined.append((other, node))
            name = main
        else:
            raise StructureError(
                "mask_structure",
                f"{_label(node)} sits between the head and the floor; cannot analyse the head "
                "(re-export with `edge-unlearn export`)",
            )
    raise StructureError("mask_structure", "the chain from the mask back to the head is too long to analyse")


def static_checks(model: Any, meta: Any) -> tuple[list[Check], MaskStructure | None]:
    """``mask_structure``, ``head_rows``, ``index_map``, ``fill_value``, ``retained_floor`` from the graph against
    ``meta``. An unprovable graph gives one failed check (its name from the :class:`StructureError`)."""
    try:
        found = prove_mask(model, meta)
    except StructureError as exc:
        return [Check(exc.check, None, "==", 1.0, str(exc))], None
    return proof_checks(found, meta), found


def prove_mask(model: Any, meta: Any) -> MaskStructure:
    """:func:`analyse_mask` with the metadata's input, output and class count."""
    return analyse_mask(model, meta.output_name, meta.input_name, meta.num_classes)


def proof_checks(found: MaskStructure, meta: Any) -> list[Check]:
    """The checks of a proven mask chain against the metadata (what the graph must say)."""
    retained = list(meta.retained_classes)
    forgotten = sorted(set(meta.forgotten_classes))
    checks = [
        Check(
            "mask_structure",
            1.0,
            "==",
            1.0,
            f"{found.head_node} -> floor {found.floor_value:g} -> {found.pad_node} -> {found.gather_node} -> "
            f"{meta.output_name}; every path from the input passes through the head",
        )
    ]
    widths_ok = found.head_width == len(retained) and not found.full_width_layers
    checks.append(
        Check(
            "head_rows",
            float(found.head_width) if widths_ok or found.head_width != len(retained) else float(meta.num_classes),
            "==",
            float(len(retained)),
            f"head {found.head_node!r} has {found.head_width} output columns; {meta.num_classes} classes "
            f"- {len(forgotten)} forgotten = {len(retained)} (forgotten rows must not be in the file)"
            + (
                f"; also feeding the output with {meta.num_classes} columns (the original head?): "
                f"{', '.join(found.full_width_layers[:3])}"
                if found.full_width_layers
                else ""
            ),
        )
    )
    expected = [0] * meta.num_classes
    for column, cls in enumerate(retained):
        expected[cls] = column
    for cls in forgotten:
        expected[cls] = len(retained)
    wrong = [c for c in range(meta.num_classes) if c >= len(found.index_map) or found.index_map[c] != expected[c]]
    right_size = len(found.index_map) == meta.num_classes and found.head_width == len(retained)
    checks.append(
        Check(
            "index_map",
            1.0 if right_size and not wrong else 0.0,
            "==",
            1.0,
            f"index map {list(found.index_map)}; expected {expected} (retained class -> its own column, "
            f"forgotten -> fill column {len(retained)})" + (f"; wrong for classes {wrong}" if wrong else ""),
        )
    )
    fill_ok = math.isfinite(found.fill_value) and found.fill_value == float(np.float32(meta.mask_value))
    checks.append(
        Check(
            "fill_value",
            found.fill_value if math.isfinite(found.fill_value) else None,
            "==",
            float(np.float32(meta.mask_value)),
            "the graph's fill constant against the declared mask_value"
            + ("" if fill_ok else " (the fill was edited, or the metadata was)"),
        )
    )
    gap = found.floor_at_output - found.fill_at_output
    checks.append(
        Check(
            "retained_floor",
            gap if math.isfinite(gap) else None,
            ">",
            0.0,
            f"floor {found.floor_at_output:g} minus fill {found.fill_at_output:g} at the output's type: every "
            "retained logit is >= the floor for every input (NaN included), so a forgotten class never wins",
        )
    )
    return checks


def stress_inputs(input_shape: Sequence[int], normalization: dict[str, Any] | None, seed: int = 0) -> np.ndarray:
    """Preprocessed images no training set contains: random noise, extreme pixels, constant images.

    Pixels are in [0, 1] before normalisation; "extreme" ones are -4 and +5 (far outside) and a 0/1
    checkerboard."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1 or int(np.prod(shape)) > (1 << 24):
        raise ModelFileError(
            f"input shape {list(shape)} is not a plausible [channels, height, width]; re-export the model"
        )
    rng = np.random.default_rng(seed)
    norm = normalization or {}
    channels = shape[0]
    mean = np.asarray(norm.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
    std = np.asarray(norm.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)
    if mean.size not in (1, channels) or std.size not in (1, channels) or np.any(std == 0):
        mean, std = np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32)
    pixels = [rng.uniform(0.0, 1.0, (STRESS_RANDOM, *shape)), rng.choice([-4.0, 5.0], (STRESS_RANDOM // 2, *shape))]
    checker = (np.indices(shape[1:]).sum(axis=0) % 2).astype(np.float32)
    pixels.append(np.broadcast_to(checker, shape)[None])
    for value in (-4.0, 0.0, 0.5, 1.0, 5.0):
        pixels.append(np.full((1, *shape), value))
    normalized = [
        (np.concatenate(pixels).astype(np.float32) - mean) / std,
        rng.standard_normal((STRESS_RANDOM, *shape)).astype(np.float32),
    ]  # already in normalized space
    return np.concatenate(normalized).astype(np.float32)


def output_checks(
    logits_by_source: dict[str, np.ndarray], forgotten: Iterable[int], num_classes: int, fill: float
) -> list[Check]:
    """``forgotten_columns_constant`` and ``fill_margin`` from the model's outputs on named input sets."""
    forgotten = sorted(set(int(c) for c in forgotten))
    keep = np.ones(num_classes, bool)
    keep[forgotten] = False
    fill32 = np.float32(fill)
    off, cells, margins, where = 0, 0, [], []
    for source, logits in logits_by_source.items():
        logits = np.asarray(logits, np.float32)
        if logits.ndim != 2 or logits.shape[1] != num_classes or not len(logits):
            continue
        bad = int(np.sum(logits[:, forgotten] != fill32)) if forgotten else 0
        off += bad
        cells += logits[:, forgotten].size
        if bad:
            where.append(f"{source}: {bad}")
        retained = logits[:, keep].astype(np.float64)
        if retained.size:  # per image: lowest retained logit minus the highest forgotten one (the fill when intact)
            top = (
                logits[:, forgotten].astype(np.float64).max(axis=1)
                if forgotten
                else np.full(len(logits), float(fill32))
            )
            margins.append((float(np.min(retained.min(axis=1) - top)), source))
    sources = ", ".join(f"{k} ({len(v)})" for k, v in logits_by_source.items())
    checks = [
        Check(
            "forgotten_columns_constant",
            float(off) if cells or not forgotten else None,
            "==",
            0.0,
            f"forgotten-class logits not equal to the fill {float(fill32):g} on {sources}"
            + (f" [{'; '.join(where)}]" if where else ""),
        )
    ]
    if margins:
        margin, source = min(margins)
        value = margin if math.isfinite(margin) else None
        checks.append(
            Check(
                "fill_margin",
                value,
                ">",
                0.0,
                f"lowest retained logit minus the highest forgotten-class logit, per image (worst on {source}); "
                "the fill must sit below every retained logit",
            )
        )
    else:
        checks.append(Check("fill_margin", None, ">", 0.0, "no retained-class logits were measured"))
    return checks


def run_onnx(model: Any, meta: Any, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The model's outputs on CPU onnxruntime (for the torch-free check without a runner)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    outs = [
        session.run([meta.output_name], {meta.input_name: inputs[i : i + batch_size]})[0]
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


def graph_checks(model: Any, meta: Any = None, extra_inputs: dict[str, np.ndarray] | None = None) -> list[Check]:
    """Every structural check of an in-memory ONNX model: static, then a stress run on CPU onnxruntime
    (plus ``extra_inputs``, e.g. the bundle). ``meta`` defaults to the model's own metadata."""
    from .onnx_meta import read_meta

    meta = meta or read_meta(model)
    checks, found = static_checks(model, meta)
    inputs = {"stress": stress_inputs(meta.input_shape, meta.normalization), **(extra_inputs or {})}
    try:
        logits = {name: run_onnx(model, meta, x) for name, x in inputs.items()}
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises Fail/InvalidGraph/NotImplemented
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # e.g. FP16 kernels missing on CPU: the static checks above still prove the mask; the runtime ones are
        # measured by `validate` on the device's own runtime
        return checks + [
            Check(
                STRESS_NOT_RUN,
                None,
                "==",
                0.0,
                f"onnxruntime (CPU) could not run the stress inputs here: {first[:200]}",
            )
        ]
    return checks + output_checks(logits, meta.forgotten_classes, meta.num_classes, meta.mask_value)
