"""Validators: does forgetting survive on this runtime, in this precision? (No torch imports.)

:func:`validate` runs a :class:`~export.runner.Runner` over an evaluation bundle and returns a
:class:`ValidationReport` — per-class table, thresholds, every check with its measured value, verdict and
environment. It fails closed: a figure that could not be measured (no forgotten-class samples, unknown
forgotten classes of the model, ...) is a failed check, never a pass.

Beyond accuracy on the bundle's natural images (which a model that still knows a class can pass, issue #13), every
runner is also run on stress inputs, and ``forgotten_columns_constant`` / ``fill_margin`` judge the outputs; for
ONNX the graph itself is read and the mask proven for every input (``mask_structure``, ``head_rows``,
``index_map``, ``fill_value``, ``retained_floor``; see :mod:`edge_unlearn.deploy.structure` and
docs/threat-model.md): a graph it cannot prove is refused (ModelFileError, exit 2, "cannot prove ...").
The bundle is read by :func:`edge_unlearn.deploy.bundle.load_bundle`, which refuses one whose digest does not
match; its digest and provenance are in the report (``bundle``), hence in the run folder's validate record.

``audit`` (``validate --audit``, an audit export and a ``bundle --audit``) adds the feature-level checks of
:mod:`edge_unlearn.deploy.audit`: the stored probe and the prototype attack on the deployed model's own features.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_unlearn.core.figures import accuracy as _acc
from edge_unlearn.core.figures import retain_drop
from edge_unlearn.errors import ModelFileError, UsageError

from .audit import AuditThresholds, audit_lines
from .bundle import Bundle, load_bundle
from .onnx_meta import MASK_VALUE
from .runner import Runner
from .structure import Check, output_checks, stress_inputs


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria; accuracies are fractions in [0, 1]."""

    max_forget_acc: float = 0.01
    max_retain_drop: float = 0.01
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be a fraction between 0 and 1, got {value}")

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ValidationReport:
    """The verdict and everything it rests on. ``bool(report)`` is the verdict."""

    model: str
    bundle: dict[str, Any]
    environment: dict[str, Any]
    thresholds: Thresholds
    checks: list[Check]
    per_class: list[dict[str, Any]]
    samples: int
    seconds: float
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    #: the feature-level audit's figures (device, FP32, retrained, thresholds, weight steps); None without --audit
    audit: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def figure(self, name: str) -> float | None:
        for check in self.checks:
            if check.name == name:
                return check.value
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.passed else "fail",
            "model": self.model,
            "samples": self.samples,
            "runtime": self.environment.get("runtime"),
            "provider": self.environment.get("provider"),
            "precision": self.environment.get("precision"),
            "device": self.environment.get("device"),
            "thresholds": self.thresholds.to_json(),
            "checks": [c.to_json() for c in self.checks],
            "per_class": self.per_class,
            "bundle": self.bundle,
            "environment": self.environment,
            "seconds": self.seconds,
            "created": self.created,
            **({"audit": self.audit} if self.audit is not None else {}),
        }

    def summary(self) -> str:
        """Human-readable: per-class table, checks, verdict."""
        env = self.environment
        lines = [
            f"validate {self.model}  [{env.get('runtime')} / {env.get('provider')} / {env.get('precision')}]  "
            f"on {self.samples} bundle samples",
            f"{'class':>5}  {'name':<14} {'status':<9} {'n':>6} {'acc':>7} {'ref acc':>7} {'agree':>7} {'wins':>6}",
        ]
        for row in self.per_class:

            def fmt(v: float | None) -> str:
                return "   -   " if v is None else f"{v:7.4f}"

            lines.append(
                f"{row['class']:>5}  {str(row['name'])[:14]:<14} {'FORGOTTEN' if row['forgotten'] else 'kept':<9} "
                f"{row['n']:>6} {fmt(row['acc'])} {fmt(row['ref_acc'])} {fmt(row['agreement'])} {row['wins']:>6}"
            )
        lines.append("checks:")
        for c in self.checks:
            value = "missing" if c.value is None else f"{c.value:.4g}"
            lines.append(
                f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {value} {c.op} {c.threshold:g}"
                + (f"  ({c.detail})" if c.detail else "")
            )
        if self.audit is not None:
            lines.extend(audit_lines(self.audit))
        lines.append(
            f"verdict: {'PASS' if self.passed else 'FAIL'}"
            + ("" if self.passed else f" ({', '.join(c.name for c in self.failed)})")
        )
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> None:
        from edge_unlearn.core.jsontext import to_json_text
        from edge_unlearn.fileio import atomic_output

        with atomic_output(path) as tmp:
            Path(tmp).write_text(to_json_text(self.to_json()) + "\n")


def run_logits(runner: Runner, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """All logits of ``inputs`` through an active runner, in batches."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    outs = [runner.infer(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def evaluate_logits(
    logits: np.ndarray, bundle: Bundle, thresholds: Thresholds, model_forgotten: list[int] | None = None
) -> tuple[list[Check], list[dict[str, Any]]]:
    """The checks and per-class table of a model's logits on a bundle (engine-agnostic, pure numpy)."""
    n, c = len(bundle.labels), bundle.num_classes
    if logits.shape != (n, c):
        raise ModelFileError(
            f"the model produced logits of shape {logits.shape} but the bundle needs ({n}, {c}): "
            "the model and the bundle do not belong together (different class count?)"
        )
    labels, forgotten = bundle.labels, list(bundle.forgotten_classes)
    finite = np.isfinite(logits)
    bad_rows = ~finite.all(axis=1)
    pred = np.where(finite, logits, -np.inf).argmax(axis=1)
    pred[bad_rows] = -1  # a row with NaN/Inf is never a correct prediction
    ref = bundle.reference_logits
    ref_pred = np.where(np.isin(np.arange(c), forgotten)[None, :], -np.inf, ref).argmax(axis=1)
    is_forgotten = np.isin(labels, forgotten)
    is_retained = ~is_forgotten
    forget_acc = _acc(pred[is_forgotten], labels[is_forgotten]) if forgotten else None
    retain_acc = _acc(pred[is_retained], labels[is_retained])
    ref_retain_acc = _acc(ref_pred[is_retained], labels[is_retained])
    drop = retain_drop(ref_retain_acc, retain_acc)
    agreement = _acc(pred[is_retained], ref_pred[is_retained])
    wins = int(np.isin(pred, forgotten).sum()) if forgotten else 0
    checks = [
        Check(
            "finite_outputs",
            float(int(bad_rows.sum())),
            "==",
            0.0,
            f"{int((~finite).sum())} NaN/Inf logits in {int(bad_rows.sum())} rows",
        ),
        Check(
            "forget_acc",
            forget_acc,
            "<=",
            thresholds.max_forget_acc,
            f"{int(is_forgotten.sum())} samples of forgotten classes {forgotten}"
            if forgotten
            else "the bundle names no forgotten class",
        ),
        Check(
            "forgotten_class_wins",
            float(wins) if forgotten else None,
            "==",
            0.0,
            "samples (of any class) whose top class is a forgotten one",
        ),
        Check(
            "retain_drop",
            drop,
            "<=",
            thresholds.max_retain_drop,
            f"retained accuracy {retain_acc if retain_acc is None else round(retain_acc, 4)} vs FP32 reference "
            f"{ref_retain_acc if ref_retain_acc is None else round(ref_retain_acc, 4)}",
        ),
        Check(
            "retain_agreement",
            agreement,
            ">=",
            thresholds.min_agreement,
            f"argmax agreement with the FP32 reference on {int(is_retained.sum())} retained-class samples",
        ),
    ]
    if model_forgotten is None:
        checks.append(
            Check("model_forgets_bundle_classes", None, "==", 1.0, "the model does not say which classes it forgot")
        )
    else:
        missing = sorted(set(forgotten) - set(model_forgotten))
        checks.append(
            Check(
                "model_forgets_bundle_classes",
                0.0 if missing else 1.0,
                "==",
                1.0,
                f"model forgot {sorted(model_forgotten)}, bundle expects {forgotten}",
            )
        )
    per_class = []
    for k in range(c):
        sel = labels == k
        per_class.append(
            {
                "class": k,
                "name": bundle.class_names[k],
                "forgotten": k in forgotten,
                "n": int(sel.sum()),
                "acc": _acc(pred[sel], labels[sel]),
                "ref_acc": _acc(ref_pred[sel], labels[sel]),
                "agreement": _acc(pred[sel], ref_pred[sel]) if k not in forgotten else None,
                "wins": int((pred == k).sum()),
            }
        )
    return checks, per_class


def validate(
    runner: Runner,
    bundle: Bundle,
    thresholds: Thresholds = Thresholds(),
    batch_size: int = 64,
    extra_checks: list[Check] | None = None,
    audit: AuditThresholds | None = None,
) -> ValidationReport:
    """Run ``runner`` (entered here) over ``bundle`` and judge it against ``thresholds``."""
    start = time.perf_counter()
    with runner:
        env = runner.describe()
        declared = env.get("num_classes")
        if declared is not None and int(declared) != bundle.num_classes:
            raise ModelFileError(
                f"the model has {declared} classes but bundle {bundle.path} has {bundle.num_classes}; "
                "make the bundle from the same checkpoint the model was exported from"
            )
        logits = run_logits(runner, bundle.inputs, batch_size)
        stress = run_logits(
            runner, stress_inputs(bundle.inputs.shape[1:], bundle.meta.get("normalization")), batch_size
        )
        audit_result = _run_audit(runner, bundle, audit, batch_size) if audit is not None else None
    model_forgotten = env.get("forgotten_classes")
    checks, per_class = evaluate_logits(logits, bundle, thresholds, model_forgotten)
    fill = getattr(getattr(runner, "meta", None), "mask_value", bundle.meta.get("mask_value", MASK_VALUE))
    checks.extend(
        output_checks({"bundle": logits, "stress": stress}, bundle.forgotten_classes, bundle.num_classes, float(fill))
    )
    source = env.get("source_sha256")
    bundle_source = bundle.meta.get("source_sha256")
    checks.append(
        Check(
            "same_source_checkpoint",
            None if not source or not bundle_source else float(source == bundle_source),
            "==",
            1.0,
            f"model from {str(source)[:12]}…, bundle from {str(bundle_source)[:12]}…",
        )
    )
    checks.extend(extra_checks or [])
    if audit_result is not None:
        checks.extend(audit_result[0])
    env.setdefault("device", platform.machine())
    return ValidationReport(
        model=runner.path,
        bundle=bundle.describe(),
        environment=env,
        thresholds=thresholds,
        checks=checks,
        per_class=per_class,
        samples=int(len(bundle.labels)),
        seconds=time.perf_counter() - start,
        audit=audit_result[1] if audit_result else None,
    )


def _run_audit(
    runner: Runner, bundle: Bundle, thresholds: AuditThresholds, batch_size: int
) -> tuple[list[Check], dict[str, Any]]:
    """The audit checks on an active runner that returns features (:meth:`OnnxRuntimeRunner.infer_features`)."""
    from .audit import audit_checks

    infer = getattr(runner, "infer_features", None)
    if bundle.audit is None or infer is None:
        raise UsageError("the audit needs a bundle from `edge-unlearn bundle --audit` and an audit export")
    outs = [infer(bundle.inputs[i : i + batch_size]) for i in range(0, len(bundle.inputs), batch_size)]
    logits, features = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    protos = bundle.audit.proto_inputs
    proto_features = np.concatenate([infer(protos[i : i + batch_size])[1] for i in range(0, len(protos), batch_size)])
    return audit_checks(
        features,
        logits,
        proto_features,
        bundle.labels,
        bundle.forgotten_classes,
        bundle.audit,
        bundle.reference_logits,
        thresholds,
    )


def _check_io(proto: Any, meta: Any, bundle: Bundle, model: str | Path) -> None:
    """The model's declared input/output exist and the bundle's images have the model's shape (one-line errors
    instead of an onnxruntime traceback)."""
    inputs = {i.name for i in proto.graph.input} - {t.name for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    if meta.input_name not in inputs or meta.output_name not in outputs:
        raise ModelFileError(
            f"{model}: metadata names input {meta.input_name!r} and output {meta.output_name!r} but "
            f"the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the metadata was "
            "edited: re-export the model"
        )
    if tuple(bundle.inputs.shape[1:]) != tuple(meta.input_shape):
        raise ModelFileError(
            f"bundle {bundle.path} holds images of shape {list(bundle.inputs.shape[1:])} but "
            f"{model} takes {list(meta.input_shape)}; make the bundle from the model's checkpoint"
        )
    problem = _preprocessing_mismatch(bundle.meta, meta)
    if problem:
        raise ModelFileError(
            f"bundle {bundle.path} was preprocessed otherwise than {model} expects ({problem}): its "
            "inputs are not what the model will see; make the bundle from the model's checkpoint"
        )


def _preprocessing_mismatch(bundle_meta: dict[str, Any], meta: Any) -> str:
    """How the bundle's recorded preprocessing differs from the model's ("" when it does not): the images were
    resized, cropped or normalised for another model. Where either file predates the full record, the
    normalisation alone is compared."""
    from .preprocessing import ImagePreprocessing

    recorded, norm = bundle_meta.get("preprocessing"), bundle_meta.get("normalization")
    if recorded and getattr(meta, "preprocessing", None):  # both full records (a model exported before it: norm only)
        try:
            ours = ImagePreprocessing.from_json(recorded)
        except ModelFileError as exc:
            return f"its record is unreadable: {exc}"
        theirs = meta.prep
        differ = [
            f"{name} {getattr(ours, name)} vs {getattr(theirs, name)}"
            for name in ("channels", "resize", "crop", "interpolation", "mean", "std")
            if not _same_value(getattr(ours, name), getattr(theirs, name))
        ]
        return "; ".join(differ)
    if isinstance(norm, dict) and meta.normalization:
        differ = [
            f"{key} {norm.get(key)} vs {meta.normalization.get(key)}"
            for key in ("mean", "std")
            if not _same_value(norm.get(key), meta.normalization.get(key))
        ]
        return "; ".join(differ)
    return ""


def _same_value(a: Any, b: Any) -> bool:
    """Equal, with floats compared to 1e-6 (records written by another float formatting)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def _audit_fix(model: str | Path, runner: Runner) -> str:
    """What ``validate --audit`` runs on, for this kind of file: how to make the audit sibling of ``model``."""
    runtime = getattr(runner, "runtime", "")
    export = "`edge-unlearn export CHECKPOINT --audit -o model.audit.onnx`"
    if runtime == "openvino" and Path(model).suffix.lower() != ".onnx":
        return f"an audit IR: {export}, then `edge-unlearn convert model.audit.onnx --to openvino` (same --precision)"
    if runtime == "litert":
        return "an audit .tflite: `edge-unlearn convert CHECKPOINT --to litert --audit` (same --precision)"
    if runtime == "executorch":
        return "an audit .pte: `edge-unlearn convert CHECKPOINT --to executorch --audit` (same --precision)"
    if runtime in ("onnxruntime", "openvino"):
        return f"an audit export: {export}, quantized like the deployed model"
    where = runtime or "this runtime"
    return f"an audit export ({export}) on onnxruntime, OpenVINO, LiteRT or ExecuTorch; not wired to {where}"


def validate_model(
    model: str | Path,
    bundle: str | Path,
    thresholds: Thresholds = Thresholds(),
    provider: str | None = None,
    batch_size: int = 64,
    echo: Callable[[str], None] | None = None,
    audit: AuditThresholds | None = None,
) -> ValidationReport:
    """Open the model's runner by suffix, load the bundle, validate; for ONNX add the static graph checks.
    ``audit``: also the feature-level audit (an audit export of ``edge-unlearn export --audit``, quantized or not, or
    the OpenVINO IR / LiteRT ``.tflite`` / ExecuTorch ``.pte`` converted with its features output, and a bundle from ``bundle --audit``);
    UsageError naming the fix when either is missing."""
    from .runners import open_runner

    runner = open_runner(model, provider=provider)
    loaded = load_bundle(bundle)
    if audit is not None:
        from .audit import AuditRunner
        from .runners import OnnxRuntimeRunner

        if loaded.audit is None:
            raise UsageError(
                f"bundle {bundle} has no audit data; make it with `edge-unlearn bundle CHECKPOINT --audit "
                f"[--retrained RETRAINED] -o {Path(bundle).name}`"
            )
        onnxruntime = isinstance(runner, OnnxRuntimeRunner)
        # OpenVINO (.xml, or .onnx on --provider openvino) and LiteRT (.tflite) check the file's outputs by name
        has_features = bool(getattr(getattr(runner, "meta", None), "features_name", "")) and (
            onnxruntime or (hasattr(runner, "infer_features") and bool(getattr(runner, "has_features", False)))
        )
        if not has_features:
            raise UsageError(f"{model} has no features output; validate --audit runs on {_audit_fix(model, runner)}")
        if onnxruntime:
            runner = AuditRunner(model, provider=provider)
    extra: list[Check] = []
    if Path(model).suffix.lower() == ".onnx":
        from .onnx_hazards import check_model
        from .onnx_meta import load_onnx, read_meta
        from .structure import StructureError, proof_checks, prove_mask

        proto = load_onnx(model)
        _check_io(proto, read_meta(proto), loaded, model)
        hazards = [f.line() for f in check_model(proto, path=str(model), runtime="onnxruntime", structure=False).errors]
        extra.append(
            Check(
                "graph_hazards",
                float(len(hazards)),
                "==",
                0.0,
                "; ".join(hazards[:3]) if hazards else "no zero Q/DQ scales, no non-finite constants",
            )
        )
        meta = read_meta(proto)
        try:
            found = prove_mask(proto, meta)
        except StructureError as exc:
            raise ModelFileError(
                f"{model}: {exc}; deploy only a model written by `edge-unlearn export`/`quantize`"
            ) from exc
        extra.extend(proof_checks(found, meta))
    runtime_checks = getattr(runner, "static_checks", None)  # the graph of another format (OpenVINO IR)
    if runtime_checks is not None:
        extra.extend(runtime_checks())
    report = validate(runner, loaded, thresholds, batch_size, extra, audit)
    if echo is not None:
        echo(report.summary())
    return report
