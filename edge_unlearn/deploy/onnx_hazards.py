"""Check an ONNX file for the deployment hazards of docs/design.md §4 before TensorRT sees it. Pure onnx + numpy.

No torch, no TensorRT: the same checks serve ``build-engine`` (which refuses on any error) and the validators
(which can attach the report to theirs). Every finding names the node and tensor, says what goes wrong on the
device, and says how to fix it.

What is checked (codes in brackets):

- Q/DQ scales that are zero, negative or not finite [``qdq-nonpositive-scale``]: per-channel INT8 of an
  all-zero (masked) weight row gives scale 0; TensorRT's ONNX parser rejects it ("Scale coefficients must all
  be positive") while onnxruntime silently substitutes 1.0.
- Q/DQ zero points that are not 0, or unsigned [``qdq-nonzero-zero-point``, ``qdq-unsigned``]: TensorRT's
  quantization is symmetric signed INT8 with zero point 0.
- INT32 DequantizeLinear (a quantized bias) [``qdq-int32-input``]: TensorRT accepts only floating-point
  ("activation") inputs to a DequantizeLinear; keep the bias in float.
- An activation quantization range so wide that a mask value must have set it [``qdq-range-dominated``]:
  a -1e4 forgotten logit sets the output's INT8 range and every other logit rounds to a handful of levels
  (argmax agreement with FP32 fell to 0/4 in our measurement).
- Constants that are infinite or NaN in FP16 [``fp16-nonfinite-constant``], and FP32 constants beyond the FP16
  range (65504) where the network will run in FP16 [``fp16-overflow-constant``]: -1e9 is -inf in FP16 and
  -inf minus -inf in a softmax is NaN.
- Non-finite FP32 constants [``nonfinite-constant``] (a warning; an error when the target is FP16 or INT8).
- ArgMax / TopK / INT64 outputs in the graph [``argmax-in-graph``, ``topk-too-large``, ``int64-output``]:
  TensorRT lowers ArgMax to TopK (K <= 3840) and casts INT64 to INT32; prefer raw logits and argmax on the host.
- The structure of the mask [``structure-<check>``, see :mod:`edge_unlearn.deploy.structure`]: proven from the
  graph for every input -- every path from the input passes through the head, which has C - k rows; a floor
  keeps every retained logit (NaN included) above the fill; the index map sends every retained class to its own
  column and every forgotten one to the fill; the fill equals the declared mask value; every mask constant and
  quantization parameter is input-free and not overridable. On stress inputs the forgotten columns are also
  measured (the margin is in :attr:`HazardReport.structure`). A graph with edge-unlearn metadata whose mask
  cannot be proven is an error ("cannot prove ..."); one without metadata gets a ``structure-not-checked``
  warning.

This is the one hazard checker of the project: ``runtime="tensorrt"`` (``build-engine``) makes the TensorRT-only
findings errors; ``runtime="onnxruntime"`` (``validate``, ``quantize``) reports them as info, since onnxruntime
runs UINT8/asymmetric/dynamic INT8 correctly (the CPU layouts of ``edge_unlearn_quant_target = cpu``).
Longer than 500 lines because the hazard rules and their messages are one table read by quantize, build-engine and validate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edge_unlearn.core.formats import PRECISIONS
from edge_unlearn.errors import ModelFileError

FP16_MAX = 65504.0
#: TensorRT's TopK limit (ArgMax is lowered to TopK).
TRT_TOPK_MAX_K = 3840
#: Default widest INT8 activation range (absolute value) we accept before calling it mask-dominated.
DEFAULT_RANGE_LIMIT = 1000.0

SEVERITIES = ("error", "warning", "info")
RUNTIMES = ("tensorrt", "onnxruntime")
#: findings that only TensorRT cares about: info under runtime="onnxruntime"
TENSORRT_ONLY = frozenset(
    {
        "qdq-nonzero-zero-point",
        "qdq-unsigned",
        "qdq-int32-input",
        "qdq-dynamic-scale",
        "topk-too-large",
        "argmax-in-graph",
        "int64-output",
        "qdq-range-dominated",
    }
)

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: order of errors in a report (the first one is what the CLI prints): the §3 hazards first
_PRIORITY = {
    code: i
    for i, code in enumerate(
        (
            "qdq-nonpositive-scale",
            "qdq-range-dominated",
            "fp16-nonfinite-constant",
            "fp16-overflow-constant",
            "nonfinite-constant",
            "qdq-nonzero-zero-point",
            "qdq-unsigned",
            "qdq-int32-input",
            "qdq-dynamic-scale",
            "topk-too-large",
            "argmax-in-graph",
            "int64-output",
            "masked-row-quantized",
            "nonfinite-attribute",
        )
    )
}


@dataclass(frozen=True)
class Finding:
    """One hazard: a stable ``code``, ``severity`` (error / warning / info), where, what and how to fix it."""

    code: str
    severity: str
    message: str
    fix: str
    node: str | None = None
    tensor: str | None = None

    def line(self) -> str:
        where = f"node {self.node!r}" if self.node else (f"tensor {self.tensor!r}" if self.tensor else "graph")
        return f"[{self.code}] {where}: {self.message}; fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HazardReport:
    """All findings for one ONNX file. Truthy when it has no error (warnings do not block a build)."""

    path: str
    precision: str
    target_precision: str
    findings: list[Finding] = field(default_factory=list)
    #: the structural checks of the mask (``structure.Check``), passed ones included, e.g. the fill margin
    structure: list[Any] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.ok

    def codes(self, severity: str | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def summary(self) -> str:
        """One line: the verdict and the first error (what the CLI prints)."""
        if self.ok:
            extra = f" ({len(self.warnings)} warning(s))" if self.warnings else ""
            floor = next((c.value for c in self.structure if c.name == "retained_floor"), None)
            proved = (
                f"; mask proven for every input (head {self._figure('head_rows'):.0f} rows, retained floor "
                f"{floor:.4g} above the fill, fill margin {self._figure('fill_margin'):.4g} on stress inputs)"
                if self.structure and floor is not None
                else ""
            )
            return f"{self.path}: no TensorRT deployment hazards{proved}{extra}"
        first = self.errors[0]
        more = f" (+{len(self.errors) - 1} more error(s); see --json)" if len(self.errors) > 1 else ""
        return f"{self.path} is not safe to deploy: {first.line()}{more}"

    def _figure(self, name: str) -> float:
        return next((float(c.value) for c in self.structure if c.name == name and c.value is not None), float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "structure": [c.to_json() for c in self.structure],
            "path": self.path,
            "precision": self.precision,
            "target_precision": self.target_precision,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def raise_for_errors(self) -> None:
        """Raise :class:`ModelFileError` with :meth:`summary` when there is any error."""
        if not self.ok:
            raise ModelFileError(self.summary())


# ----------------------------------------------------------------------------------------------- loading


def load_onnx(path: str | os.PathLike) -> Any:
    """Load an ONNX model (with external data) or raise :class:`ModelFileError` saying what to do."""
    import onnx

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ModelFileError(f"ONNX file {p} does not exist; export one with `edge-unlearn export`")
    try:
        return onnx.load(p)
    except Exception as exc:  # onnx raises DecodeError / OSError / ValueError depending on the damage
        raise ModelFileError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc}); re-export it") from exc


def _constants(model: Any) -> dict[str, np.ndarray]:
    """Name -> array for every initializer and every Constant node output (subgraphs not included)."""
    from onnx import numpy_helper

    out: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        out[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value":
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                out[node.output[0]] = np.asarray(attr.f, dtype=np.float32)
            elif attr.name == "value_floats":
                out[node.output[0]] = np.asarray(list(attr.floats), dtype=np.float32)
    return out


def _tensor_consumers(model: Any) -> dict[str, list[Any]]:
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def onnx_precision(model: Any) -> str:
    """``int8`` if the graph has Q/DQ nodes, ``fp16`` if it carries FP16 tensors or casts to FP16, else ``fp32``."""
    from onnx import TensorProto

    if any(n.op_type in _QDQ_OPS for n in model.graph.node):
        return "int8"
    fp16 = TensorProto.FLOAT16
    if any(i.data_type == fp16 for i in model.graph.initializer):
        return "fp16"
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.tensor_type.elem_type == fp16:
            return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
        if node.op_type == "Constant" and any(a.name == "value" and a.t.data_type == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


# ----------------------------------------------------------------------------------------------- checks


def _indices(mask: np.ndarray, limit: int = 8) -> str:
    idx = np.flatnonzero(mask)
    text = ", ".join(str(int(i)) for i in idx[:limit])
    return text + (f", ... ({idx.size} in all)" if idx.size > limit else "")


def _qrange(zero_point: np.ndarray | None) -> tuple[int, int]:
    if zero_point is not None and zero_point.dtype == np.uint8:
        return 0, 255
    return -128, 127


def _axis(node: Any, ndim: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis % ndim


def _check_qdq(model: Any, consts: dict[str, np.ndarray], range_limit: float) -> Iterable[Finding]:
    for node in model.graph.node:
        if node.op_type not in _QDQ_OPS:
            continue
        name = node.name or f"{node.op_type}({node.output[0]})"
        scale_name = node.input[1] if len(node.input) > 1 else ""
        scale = consts.get(scale_name)
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zp = consts.get(zp_name) if zp_name else None
        if scale is None:
            yield Finding(
                "qdq-dynamic-scale",
                "error",
                f"{node.op_type} scale {scale_name!r} is not a constant; TensorRT needs build-time scales",
                "quantize statically (onnxruntime.quantization.quantize_static), not dynamically",
                node=name,
                tensor=scale_name,
            )
            continue
        scale = np.asarray(scale, dtype=np.float64)
        bad = ~np.isfinite(scale) | (scale <= 0)
        if bad.any():
            where = f"channel(s) {_indices(bad.ravel())}" if scale.size > 1 else "the tensor"
            values = ", ".join(f"{v:g}" for v in scale.ravel()[bad.ravel()][:4])
            yield Finding(
                "qdq-nonpositive-scale",
                "error",
                f"{node.op_type} scale {scale_name!r} is {values} for {where}; TensorRT's parser rejects it "
                '("Scale coefficients must all be positive"); an all-zero (masked) weight row quantized '
                "per channel gives scale 0",
                "compact the head (drop forgotten rows) before quantizing, or keep the head in float "
                "(nodes_to_exclude) / quantize it per tensor",
                node=name,
                tensor=scale_name,
            )
        if zp is not None:
            if zp.dtype == np.uint8:
                yield Finding(
                    "qdq-unsigned",
                    "error",
                    f"{node.op_type} zero point {zp_name!r} is UINT8; TensorRT supports signed INT8 Q/DQ only",
                    "re-quantize to signed INT8 (`edge-unlearn quantize`; quantize_static "
                    "activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)",
                    node=name,
                    tensor=zp_name,
                )
            if np.any(zp != 0):
                vals = ", ".join(str(int(v)) for v in np.unique(zp.ravel())[:4])
                yield Finding(
                    "qdq-nonzero-zero-point",
                    "error",
                    f"{node.op_type} zero point {zp_name!r} is {vals}; TensorRT quantization is symmetric "
                    "(zero point 0)",
                    "re-quantize with symmetric activations (`edge-unlearn quantize` without --asymmetric-activations; "
                    "quantize_static extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True})",
                    node=name,
                    tensor=zp_name,
                )
        x_name = node.input[0]
        x = consts.get(x_name)
        if node.op_type == "DequantizeLinear" and x is not None and x.dtype in (np.int32, np.uint32):
            yield Finding(
                "qdq-int32-input",
                "error",
                f"DequantizeLinear of INT32 tensor {x_name!r} (a quantized bias); TensorRT accepts only "
                'floating-point inputs to this layer ("only activation types allowed")',
                "quantize with extra_options={'QuantizeBias': False} so the bias stays in float",
                node=name,
                tensor=x_name,
            )
        if (
            node.op_type == "DequantizeLinear"
            and x is not None
            and x.dtype == np.int8
            and x.ndim >= 2
            and scale.size > 1
            and scale.size == x.shape[_axis(node, x.ndim)]
        ):
            axis = _axis(node, x.ndim)
            rows = np.moveaxis(x, axis, 0).reshape(scale.size, -1)
            empty = ~rows.any(axis=1)
            if empty.any() and not bad.ravel()[empty].any():
                yield Finding(
                    "masked-row-quantized",
                    "info",
                    f"channel(s) {_indices(empty)} of {x_name!r} are all zero (masked rows) with scale(s) "
                    f"{', '.join(f'{v:g}' for v in scale.ravel()[empty][:4])}: a quantizer substituted a "
                    "positive scale for an all-zero row",
                    "compact the head so forgotten rows are not in the graph at all",
                    node=name,
                    tensor=x_name,
                )
        if node.op_type == "QuantizeLinear" and x is None and np.all(np.isfinite(scale)):
            qmin, qmax = _qrange(zp)
            zpv = np.asarray(zp if zp is not None else 0, dtype=np.float64)
            lo = float(np.min((qmin - zpv) * scale))
            hi = float(np.max((qmax - zpv) * scale))
            widest = max(abs(lo), abs(hi))
            if widest > range_limit:
                yield Finding(
                    "qdq-range-dominated",
                    "error",
                    f"INT8 range of {x_name!r} is [{lo:.4g}, {hi:.4g}] in steps of {float(np.max(scale)):.4g}; "
                    f"wider than {range_limit:g}, so a mask value has set it and every ordinary value rounds "
                    "to a few INT8 levels (argmax no longer agrees with FP32)",
                    "keep the head's output in float (exclude the last Gemm/MatMul from quantization) and mask "
                    "outside the quantized range: compact the head, or mask on the host",
                    node=name,
                    tensor=x_name,
                )


def _feeds_fp16_cast(name: str, consumers: dict[str, list[Any]]) -> bool:
    from onnx import TensorProto

    return any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
        for n in consumers.get(name, ())
    )


def _check_constants(
    model: Any, consts: dict[str, np.ndarray], target: str, consumers: dict[str, list[Any]]
) -> Iterable[Finding]:
    producers = {o: (n.name or n.op_type) for n in model.graph.node for o in n.output}
    for name, arr in consts.items():
        if arr.dtype.kind != "f" or arr.size == 0:
            continue
        node = producers.get(name)
        finite = np.isfinite(arr)
        if arr.dtype == np.float16:
            if not finite.all():
                vals = ", ".join(f"{v:g}" for v in np.unique(arr[~finite])[:3])
                yield Finding(
                    "fp16-nonfinite-constant",
                    "error",
                    f"FP16 constant {name!r} holds {vals} at {int((~finite).sum())} position(s); a mask value "
                    "beyond 65504 (e.g. -1e9) becomes -inf in FP16 and a softmax over it gives NaN",
                    "use a finite FP16-safe mask value (e.g. -1e4) or compact the head so no mask constant is needed",
                    node=node,
                    tensor=name,
                )
            continue
        big = finite & (np.abs(arr) > FP16_MAX)
        if big.any() and (target == "fp16" or _feeds_fp16_cast(name, consumers)):
            vals = ", ".join(f"{v:g}" for v in np.unique(arr[big])[:3])
            yield Finding(
                "fp16-overflow-constant",
                "error",
                f"FP32 constant {name!r} holds {vals}, beyond the FP16 range (65504); in FP16 it is +-inf and "
                "a softmax over it gives NaN",
                "use a finite FP16-safe mask value (e.g. -1e4) or compact the head",
                node=node,
                tensor=name,
            )
        if not finite.all():
            severe = target in ("fp16", "int8")
            vals = ", ".join(f"{v:g}" for v in np.unique(arr[~finite])[:3])
            yield Finding(
                "nonfinite-constant",
                "error" if severe else "warning",
                f"constant {name!r} holds {vals}; -inf minus -inf in a softmax is NaN"
                + ("; in reduced precision it also breaks range calibration" if severe else ""),
                "use a finite mask value (e.g. -1e4) or compact the head",
                node=node,
                tensor=name,
            )


def _check_attributes(model: Any) -> Iterable[Finding]:
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == attr.FLOAT and not np.isfinite(attr.f):
                yield Finding(
                    "nonfinite-attribute",
                    "error",
                    f"attribute {attr.name} = {attr.f}",
                    "re-export the model; no attribute of ours is infinite",
                    node=node.name or node.op_type,
                )


def _structure_findings(model: Any, runtime_checks: bool) -> tuple[list[Finding], list[Any]]:
    """The mask's structural checks as findings (failed ones) and as checks (all)."""
    from .onnx_meta import FORMAT, PREFIX, read_meta
    from .structure import graph_checks, static_checks

    props = {p.key: p.value for p in model.metadata_props}
    if props.get(PREFIX + "format") != FORMAT:
        return [
            Finding(
                "structure-not-checked",
                "warning",
                "no edge-unlearn metadata, so the mask's structure (head rows, index map, fill) is not checked",
                "export with `edge-unlearn export`; `build-engine` refuses a graph without this metadata",
            )
        ], []
    meta = read_meta(model)
    checks = graph_checks(model, meta) if runtime_checks else static_checks(model, meta)[0]
    from .structure import STRESS_NOT_RUN

    findings = [
        Finding(
            f"structure-{c.name.replace('_', '-')}",
            "warning" if c.name == STRESS_NOT_RUN else "error",
            f"structural check {c.name} failed: {c.detail or c.line()}",
            "deploy only a model written by `edge-unlearn export`/`quantize` from the unlearned "
            "checkpoint; do not edit its graph or metadata",
        )
        for c in checks
        if not c.passed
    ]
    return findings, checks


def _check_outputs(model: Any, consts: dict[str, np.ndarray]) -> Iterable[Finding]:
    from onnx import TensorProto

    for node in model.graph.node:
        name = node.name or node.op_type
        if node.op_type in ("ArgMax", "ArgMin"):
            yield Finding(
                "argmax-in-graph",
                "warning",
                f"{node.op_type} in the graph: TensorRT lowers it to TopK (K <= {TRT_TOPK_MAX_K}) and casts "
                "its INT64 result to INT32",
                "export raw logits and take the argmax on the host",
                node=name,
            )
        elif node.op_type == "TopK" and len(node.input) > 1:
            k = consts.get(node.input[1])
            if k is not None and k.size and int(np.max(k)) > TRT_TOPK_MAX_K:
                yield Finding(
                    "topk-too-large",
                    "error",
                    f"TopK with K={int(np.max(k))}; TensorRT supports K <= {TRT_TOPK_MAX_K}",
                    "export raw logits and select on the host",
                    node=name,
                    tensor=node.input[1],
                )
    for out in model.graph.output:
        if out.type.tensor_type.elem_type == TensorProto.INT64:
            yield Finding(
                "int64-output",
                "warning",
                f"graph output {out.name!r} is INT64; TensorRT computes it in INT32",
                "export raw float logits and post-process on the host",
                tensor=out.name,
            )


def check_model(
    model: Any,
    *,
    path: str = "<model>",
    target_precision: str | None = None,
    range_limit: float = DEFAULT_RANGE_LIMIT,
    runtime: str = "tensorrt",
    structure: bool | str = True,
) -> HazardReport:
    """Check an in-memory ``onnx.ModelProto``.

    ``target_precision`` is the precision the engine will compute in (``fp16`` when TensorRT 10 is asked for the
    FP16 builder flag on an FP32 ONNX); ``None`` means the ONNX's own precision. ``runtime`` says whose rules
    apply (TensorRT-only findings are info under ``"onnxruntime"``). ``structure``: True runs the mask's
    structural checks including the stress run on CPU onnxruntime, ``"static"`` only the graph reading,
    False none.
    """
    precision = onnx_precision(model)
    target = target_precision or precision
    if target not in PRECISIONS:
        raise ValueError(f"target_precision must be one of {PRECISIONS}, got {target!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    consts = _constants(model)
    consumers = _tensor_consumers(model)
    report = HazardReport(path=path, precision=precision, target_precision=target)
    report.findings.extend(_check_qdq(model, consts, range_limit))
    report.findings.extend(_check_constants(model, consts, target, consumers))
    report.findings.extend(_check_outputs(model, consts))
    report.findings.extend(_check_attributes(model))
    if structure:
        found, report.structure = _structure_findings(model, runtime_checks=structure is True)
        report.findings.extend(found)
    if runtime == "onnxruntime":
        report.findings = [
            f
            if f.code not in TENSORRT_ONLY
            else Finding(f.code, "info", f.message + " (TensorRT only)", f.fix, f.node, f.tensor)
            for f in report.findings
        ]
        if target in ("fp32",):  # onnxruntime: a non-finite constant is an error in any precision
            report.findings = [
                Finding(f.code, "error", f.message, f.fix, f.node, f.tensor) if f.code == "nonfinite-constant" else f
                for f in report.findings
            ]
    seen: set[tuple[str, str | None]] = set()
    unique: list[Finding] = []
    for f in report.findings:  # a Q and its DQ share scale and zero point: report each tensor once
        key = (f.code, f.tensor or f.node)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    report.findings = sorted(unique, key=lambda f: (order[f.severity], _PRIORITY.get(f.code, len(_PRIORITY))))
    return report


def check_onnx_for_tensorrt(
    path: str | os.PathLike,
    *,
    target_precision: str | None = None,
    range_limit: float = DEFAULT_RANGE_LIMIT,
    structure: bool | str = True,
) -> HazardReport:
    """Load ``path`` and check it for the docs/design.md §4 hazards; see :func:`check_model`."""
    model = load_onnx(path)
    return check_model(
        model, path=os.fspath(path), target_precision=target_precision, range_limit=range_limit, structure=structure
    )


def graph_hazards(model: Any) -> list[str]:
    """One line per error under onnxruntime's rules, structure not included (what ``quantize`` refuses on and
    ``validate``'s ``graph_hazards`` check counts); empty when clean."""
    return [f.line() for f in check_model(model, runtime="onnxruntime", structure=False).errors]
