"""Structural proof that an exported graph forgets: what ``validate`` and ``build-engine --check-only`` check
beyond accuracy on natural images. Pure onnx + numpy (+ onnxruntime for the stress run); no torch.

A model that reads the right metadata and scores 0 on the bundle's forgotten images can still know the class
(issue #13: a fill of 0 or -5, or the *original* model relabelled through its metadata). So the gate also checks
the graph itself, where an edge-unlearn export has a fixed shape (see :mod:`edge_unlearn.deploy.onnx_meta`)::

    ... -> head (Gemm/MatMul, R = C - k output columns) -> [Q/DQ, bias, scale] -> Pad(+1 column = fill)
        -> Gather(axis=1, index map [C]) -> [Cast] -> output

Checks (each one is a :class:`Check`, named so a failure says which):

- ``mask_structure``: the output is exactly that chain; a graph that cannot be analysed fails (fail closed).
- ``head_rows``: the head's weight has R = C - k output columns, so the forgotten rows are not in the file.
- ``index_map``: retained class i-th in order reads column i; every forgotten class reads the fill column.
- ``fill_value``: the graph's fill constant is finite and equals the declared ``mask_value``.
- ``forgotten_columns_constant``: on the bundle and on stress inputs (random, extreme-valued, constant images)
  every forgotten output column equals the fill value exactly (input-independent).
- ``fill_margin``: the fill value is below every retained logit on those inputs; the value is the margin
  min(retained logit) - fill, which must be positive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_unlearn.errors import ModelFileError

#: ops that carry a tensor's columns unchanged between the head and the mask
_PASSTHROUGH = ("Identity", "Cast", "QuantizeLinear", "DequantizeLinear")
#: elementwise ops whose second operand is a bias, a scale or a dynamic-quantization scale
_ELEMENTWISE = ("Add", "Mul", "Sub", "Div")
#: linear ops that can be the head: op -> (index of the weight input, default column axis rule)
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
    """The graph is not the edge-unlearn mask chain; ``check`` names the failed check."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class MaskStructure:
    """What the graph says, read from the graph (not from the metadata)."""

    head_node: str
    head_width: int
    fill_value: float
    index_map: tuple[int, ...]
    pad_node: str
    gather_node: str


def _constants(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        out[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_float", "value_int"):
                    out[node.output[0]] = np.asarray(attr.f if attr.name == "value_float" else attr.i)
    return out


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


class _Graph:
    def __init__(self, model: Any) -> None:
        self.consts = _constants(model)
        self.producers = {o: n for n in model.graph.node for o in n.output if o}
        self.outputs = [o.name for o in model.graph.output]

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a constant, seen through Identity/Cast/DequantizeLinear/Transpose."""
        if name in self.consts:
            return self.consts[name]
        node = self.producers.get(name)
        if node is None or node.op_type == "Constant":
            return None
        if node.op_type in ("Identity", "Cast", "DequantizeLinear"):
            return self.const(node.input[0])  # values change, the shape does not: only shapes are read here
        if node.op_type == "Transpose":
            inner = self.const(node.input[0])
            return None if inner is None else np.transpose(inner, _attr(node, "perm"))
        return None

    def is_side(self, name: str, depth: int = 0) -> bool:
        """A bias/scale operand: a constant, a dynamic-quantization scale, or a product of those."""
        if depth > 8:
            return False
        if self.const(name) is not None:
            return True
        node = self.producers.get(name)
        if node is None:
            return False
        if node.op_type == "DynamicQuantizeLinear":
            return list(node.output).index(name) >= 1
        if node.op_type in ("Mul", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze"):
            return all(self.is_side(i, depth + 1) for i in node.input if i)
        return False


def _head_width(node: Any, graph: _Graph) -> int:
    weight_name = node.input[_LINEAR[node.op_type]] if len(node.input) > _LINEAR[node.op_type] else ""
    weight = graph.const(weight_name)
    if weight is None or weight.ndim != 2:
        raise StructureError(
            "mask_structure",
            f"the weight {weight_name!r} of head node {node.name!r} "
            "is not a constant 2-D tensor; cannot read the head's width",
        )
    trans = bool(_attr(node, "transB", 0)) if node.op_type in ("Gemm", "QGemm", "FusedMatMul") else False
    return int(weight.shape[0] if trans else weight.shape[1])


def analyse_mask(model: Any, output_name: str) -> MaskStructure:
    """Read the mask chain from the graph; :class:`StructureError` when it is not there."""
    graph = _Graph(model)
    if output_name not in graph.outputs:
        raise StructureError("mask_structure", f"the graph has no output {output_name!r} (outputs: {graph.outputs})")
    name = output_name
    node = graph.producers.get(name)
    while node is not None and node.op_type in ("Cast", "Identity"):
        node = graph.producers.get(node.input[0])
    if node is None or node.op_type != "Gather":
        raise StructureError(
            "mask_structure",
            f"output {output_name!r} is not produced by the class-index Gather "
            f"(found {node.op_type if node else 'a graph input'})",
        )
    gather = node
    index = graph.consts.get(gather.input[1]) if len(gather.input) > 1 else None
    if index is None or index.ndim != 1 or index.dtype.kind not in "iu":
        raise StructureError("mask_structure", f"Gather {gather.name!r} does not read a constant 1-D index map")
    if int(_attr(gather, "axis", 0)) not in (1, -1):
        raise StructureError("mask_structure", f"Gather {gather.name!r} is not along the class axis (axis 1)")
    node = graph.producers.get(gather.input[0])
    while node is not None and node.op_type in ("Cast", "Identity"):
        node = graph.producers.get(node.input[0])
    if node is None or node.op_type != "Pad":
        raise StructureError("mask_structure", f"the Gather {gather.name!r} does not read a Pad of the head's logits")
    pad = node
    mode = _attr(pad, "mode", b"constant")
    pads = graph.consts.get(pad.input[1]) if len(pad.input) > 1 else None
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
    fill = graph.consts.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros((), np.float32)
    if fill is None or fill.size != 1:
        raise StructureError("fill_value", f"Pad {pad.name!r} has no constant scalar fill value")
    name = pad.input[0]
    for _ in range(64):
        node = graph.producers.get(name)
        if node is None:
            raise StructureError("mask_structure", f"no head layer between the graph input and Pad {pad.name!r}")
        if node.op_type in _LINEAR:
            width = _head_width(node, graph)
            return MaskStructure(
                node.name or node.op_type,
                width,
                float(np.float32(fill.ravel()[0])),
                tuple(int(v) for v in index),
                pad.name,
                gather.name,
            )
        if node.op_type in _PASSTHROUGH:
            name = node.input[0]
        elif node.op_type in _ELEMENTWISE:
            main = [i for i in node.input if i and not graph.is_side(i)]
            if len(main) != 1:
                raise StructureError(
                    "mask_structure",
                    f"{node.op_type} {node.name!r} between the head and the mask "
                    "mixes two computed tensors; cannot tell the head",
                )
            name = main[0]
        else:
            raise StructureError(
                "mask_structure",
                f"{node.op_type} {node.name!r} sits between the head and the mask; "
                "cannot analyse the head (re-export with `edge-unlearn export`)",
            )
    raise StructureError("mask_structure", "the chain from the mask back to the head is too long to analyse")


def static_checks(model: Any, meta: Any) -> tuple[list[Check], MaskStructure | None]:
    """``mask_structure``, ``head_rows``, ``index_map``, ``fill_value`` from the graph against ``meta``."""
    retained = list(meta.retained_classes)
    forgotten = sorted(set(meta.forgotten_classes))
    try:
        found = analyse_mask(model, meta.output_name)
    except StructureError as exc:
        return [
            Check(exc.check if exc.check != "mask_structure" else "mask_structure", None, "==", 1.0, str(exc))
        ], None
    checks = [
        Check(
            "mask_structure",
            1.0,
            "==",
            1.0,
            f"{found.head_node} -> {found.pad_node} -> {found.gather_node} -> {meta.output_name}",
        )
    ]
    checks.append(
        Check(
            "head_rows",
            float(found.head_width),
            "==",
            float(len(retained)),
            f"head {found.head_node!r} has {found.head_width} output columns; {meta.num_classes} classes "
            f"- {len(forgotten)} forgotten = {len(retained)} (forgotten rows must not be in the file)",
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
    return checks, found


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
