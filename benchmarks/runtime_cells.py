"""Issue #29's acceptance cells: every edge runtime x precision x model, through the product's own commands.

For each model -- lenet on digits, the built-in resnet18 on a fashion-mnist subset, and torchvision
mobilenet_v3_small trained by a plain script (benchmarks/plain_train.py) on a fashion-mnist subset upsampled to
224², then `import`ed (ImageNet mean/std, resize to 224) -- three classes are forgotten with `forget` (NHLE), the
bundle is made with `bundle --audit`, and for OpenVINO, LiteRT and ExecuTorch in FP32 and INT8 (each runtime's own
converter and quantizer, calibrated on retained classes only, through `convert`):

- ``validate``: the verdict at the default thresholds (forget_acc ≤ 0.01, retained drop ≤ 0.01, agreement with the
  FP32 reference ≥ 0.99) and its figures;
- ``validate --audit``: on the runtime's audit file (`convert --audit`), its exit code and verdict -- whether the
  audit *runs* on the format, not whether NHLE passes it;
- the two gate attacks, made with the runtime's own tools on the same precision: the fill edited to -5 in the
  converted file, and the original (unforgotten) network with its forgotten classes' index entries pointed at
  the fill column, converted (and quantized) without the gate and given the forgotten file's metadata. Each
  must FAIL (exit 1) or be refused (exit 2); a PASS is a hole in the gate.

A runtime whose packages are not installed in the running interpreter gets "not installed" cells, never a pass
(LiteRT's converter needs ``litert-torch``, ExecuTorch ``executorch`` + ``torchao``: run this from a venv that has
them; docs/deployment.md). Models, data subsets and artefacts are kept under ``--work`` and reused.

    nice -n 15 python -m benchmarks.runtime_cells            # all models, into benchmarks/results/runtime_cells/
    nice -n 15 python -m benchmarks.runtime_cells --quick    # lenet/digits only, smaller calibration; bench_out/
    # plus an OpenVINO INT8 cell through NNCF's accuracy control (`convert --max-disagreement`); bench_out/
    nice -n 15 python -m benchmarks.runtime_cells --models mobilenet_v3_small-224 --runtimes openvino \
        --max-disagreement 0.01
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    SCRATCH,
    SHARED_DATA,
    cached_train,
    data_digest,
    provenance,
    results_dir,
    run_reporting_errors,
    runtime_versions,
    use_threads,
    write_results,
)
from edge_unlearn.errors import DataError, UsageError

HERE = Path(__file__).resolve().parent
MODULE = "benchmarks.runtime_cells"
RUNTIMES = ("openvino", "litert", "executorch")
PRECISIONS = ("fp32", "int8")
FORGET = (0, 3, 7)
#: the attacks' fill value (below the floor: validate must see the floor no longer sits above the fill)
ATTACK_FILL = -5.0
IMAGENET_MEAN, IMAGENET_STD = "0.485,0.456,0.406", "0.229,0.224,0.225"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model row: how its original is made and how big its data and calibration are."""

    name: str
    arch: str
    dataset: str  # "digits", or the shared .npz a class-balanced subset is drawn from
    train_per_class: int  # 0: the whole training split
    test_per_class: int  # the bundle's images per class
    calib_samples: int
    plain_size: int = 0  # > 0: a torchvision model trained by plain_train.py at this size, then imported
    plain_batch: int = 16  # its batch: mobilenet_v3's BatchNorm momentum is 0.01, its running statistics need steps
    epochs: int = 3
    min_steps: int = 150
    batch_size: int = 128


MODELS = {
    "lenet-digits": ModelSpec("lenet-digits", "lenet", "digits", 0, 0, 200, epochs=40, min_steps=0),
    "resnet18-fashion": ModelSpec("resnet18-fashion", "resnet18", "fashion_mnist", 300, 50, 200, epochs=3),
    "mobilenet_v3_small-224": ModelSpec(
        "mobilenet_v3_small-224", "mobilenet_v3_small", "fashion_mnist", 60, 30, 64, plain_size=224, epochs=10
    ),
}
QUICK = {"lenet-digits": dataclasses.replace(MODELS["lenet-digits"], epochs=1, min_steps=150, calib_samples=100)}


# ------------------------------------------------------------------------------------------------ the CLI, in-process


def cli(*args: Any) -> tuple[int, str, str]:
    """``edge-unlearn ARGS`` in this process: (exit code, stdout, stderr); an uncaught exception is re-raised."""
    from click.testing import CliRunner

    from edge_unlearn.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def cli_ok(*args: Any) -> str:
    """``cli(ARGS)`` that must succeed; its stdout."""
    code, out, err = cli(*args)
    if code != 0:
        raise RuntimeError(
            f"edge-unlearn {' '.join(map(str, args[:2]))} failed ({code}): {(err or out).strip()[-400:]}"
        )
    return out


def installed(runtime: str) -> str | None:
    """None when the runtime (converter, quantizer and runner) is importable here, else what is missing."""
    needs = {
        "openvino": ("openvino", "nncf"),
        "litert": ("ai_edge_litert", "litert_torch", "ai_edge_quantizer"),
        "executorch": ("executorch", "torchao"),
    }[runtime]
    missing = [m for m in needs if util.find_spec(m) is None]
    return ", ".join(missing) or None


# ----------------------------------------------------------------------------------------------------- the models


def subset(spec: ModelSpec, work: Path, seed: int = 0) -> str:
    """The dataset spec of the model: digits, or a class-balanced subset .npz of the shared dataset."""
    if spec.dataset == "digits":
        return "digits"
    out = work / f"{spec.dataset}_{spec.train_per_class}_{spec.test_per_class}.npz"
    if not out.exists():
        source = SHARED_DATA / f"{spec.dataset}.npz"
        if not source.exists():
            raise DataError(f"{source} is missing (the shared datasets); the {spec.name} cells need it")
        with np.load(source) as a:
            arrays = {k: a[k] for k in a.files}
        rng = np.random.default_rng(seed)
        for split, per in (("train", spec.train_per_class), ("test", spec.test_per_class)):
            y = arrays[f"y_{split}"]
            pick = np.sort(np.concatenate([rng.permutation(np.nonzero(y == c)[0])[:per] for c in np.unique(y)]))
            arrays[f"x_{split}"], arrays[f"y_{split}"] = arrays[f"x_{split}"][pick], y[pick]
        np.savez(out, **arrays)
    return f"npz:{out}"


def original_checkpoint(spec: ModelSpec, data_spec: str, work: Path) -> tuple[Path, float | None]:
    """The original (unforgotten) checkpoint and the seconds its training took (None: reused)."""
    if spec.plain_size:
        return imported_checkpoint(spec, data_spec, work)
    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.data import load_dataset
    from edge_unlearn.training import TrainConfig

    data = load_dataset(data_spec)
    recipe = TrainConfig(spec.epochs, spec.min_steps, spec.batch_size, device="cpu", seed=0)
    model, seconds, key = cached_train(work / "models", spec.arch, data, data_digest(data), recipe)
    path = work / f"{spec.name}.original.safetensors"
    meta = CheckpointMeta(
        spec.arch,
        data.num_classes,
        data.class_names,
        data.input_shape,
        data.normalization,
        data.spec,
        train_recipe=recipe.to_json(),
    )
    save_checkpoint(path, model, meta)
    return path, seconds


def imported_checkpoint(spec: ModelSpec, data_spec: str, work: Path) -> tuple[Path, float | None]:
    """A torchvision model trained by the plain script on the subset upsampled to ``plain_size`` (grey -> RGB),
    imported with `import` (ImageNet mean/std, resize to the same size), class statistics from the subset."""
    import torch
    from torchvision.transforms.v2 import functional as tvf

    size = spec.plain_size
    big = work / f"{spec.name}.train{size}.npz"
    pth = work / f"{spec.name}.pth"
    seconds = None
    if not pth.exists():
        with np.load(data_spec[4:]) as a:
            x = torch.from_numpy(a["x_train"])
            y = a["y_train"]
        x = x[:, None] if x.ndim == 3 else x  # N x 1 x H x W
        x = tvf.resize(x.expand(-1, 3, -1, -1).contiguous(), [size, size], antialias=True)
        np.savez(big, x_train=x.numpy(), y_train=y)
        cmd = [sys.executable, str(HERE / "plain_train.py"), "--arch", spec.arch, "--data", str(big)]
        cmd += [
            "--epochs",
            str(spec.epochs),
            "--batch-size",
            str(spec.plain_batch),
            "--mean",
            IMAGENET_MEAN,
            "--std",
            IMAGENET_STD,
        ]
        cmd += ["--threads", "1", "--recalibrate-bn", "-o", str(pth)]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        seconds = time.perf_counter() - started
        big.unlink()
    out = work / f"{spec.name}.original.safetensors"
    if not out.exists():
        cli_ok(
            "import",
            "--arch",
            f"torchvision:{spec.arch}",
            "--weights",
            pth,
            "--dataset",
            data_spec,
            "--preset",
            "imagenet",
            "--resize",
            size,
            "--image-size",
            size,
            "--stats-from",
            data_spec,
            "-o",
            out,
        )
    return out, seconds


# ---------------------------------------------------------------------------------------------------- the attacks


def _float_constant_ir(model: Any, value: float) -> list[Any]:
    """The IR's one-element Constant ops equal to ``value`` (where the attacker finds the fill)."""
    return [
        op
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_output_size() == 1 and op.get_byte_size() <= 8
        if np.asarray(op.get_data()).size == 1 and float(np.asarray(op.get_data()).ravel()[0]) == value
    ]


def fill_attack(runtime: str, src: Path, dst: Path) -> Path:
    """``src`` with the mask's fill constant set to :data:`ATTACK_FILL`, rewritten with the format's own tools into
    ``dst`` (same suffix)."""
    from edge_unlearn.deploy.onnx_meta import MASK_VALUE

    if runtime == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(src))
        targets = _float_constant_ir(model, MASK_VALUE)
        if len(targets) != 1:
            raise RuntimeError(f"{src}: {len(targets)} fill constants")
        (old,) = targets
        new = ov.opset13.constant(np.array(ATTACK_FILL, dtype=np.asarray(old.get_data()).dtype))
        old.output(0).replace(new.output(0))
        ov.save_model(model, str(dst), compress_to_fp16=False)
        return dst
    if runtime == "litert":
        import flatbuffers

        from edge_unlearn.deploy.runners_litert import load_tflite
        from edge_unlearn.deploy.structure_litert import _Tflite

        model = load_tflite(src)
        graph = _Tflite(model) if len(model.subgraphs[0].outputs) == 1 else None
        found = []
        for index, tensor in enumerate(model.subgraphs[0].tensors):
            value = graph.value(index) if graph else None
            if value is not None and value.dtype == np.float32 and value.size == 1 and value == MASK_VALUE:
                found.append(tensor.buffer)
        if len(found) != 1:
            raise RuntimeError(f"{src}: {len(found)} fill constants")
        model.buffers[found[0]].data = np.frombuffer(np.float32(ATTACK_FILL).tobytes(), np.uint8)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        dst.write_bytes(bytes(builder.Output()))
        return dst
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte = deserialize_pte_binary(src.read_bytes())
    (method,) = [p for p in pte.program.execution_plan if p.name == "forward"]
    doubles = [v.val for v in method.values if type(v.val).__name__ == "Double" and v.val.double_val == MASK_VALUE]
    if len(doubles) != 1:
        raise RuntimeError(f"{src}: {len(doubles)} fill constants")
    doubles[0].double_val = ATTACK_FILL
    dst.write_bytes(bytes(serialize_pte_binary(pte)))
    return dst


def relabel_attack(
    runtime: str, precision: str, original: Path, deployed: Path, calib: np.ndarray | None, dst: Path
) -> Path:
    """The original network (full head, nothing forgotten), its forgotten classes' index entries pointed at the fill
    column, converted -- and for INT8 quantized with the runtime's own quantizer -- without the gate, carrying the
    deployed file's metadata (what an attacker holding the original weights and the runtime's tools does)."""
    import torch

    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.export.litert import mask_module

    ckpt = load_checkpoint(original)
    model = copy.deepcopy(ckpt.model).eval()
    with torch.no_grad():
        model.class_mask.fill_(True)
    example = (torch.zeros(1, *ckpt.meta.input_shape),)
    if runtime == "openvino":
        return _relabel_ir(model, ckpt.meta, precision, deployed, calib, dst)
    module = mask_module(model)
    forgotten = list(_meta(runtime, deployed).forgotten_classes)
    module.index[forgotten] = ckpt.meta.num_classes  # the fill column of the padded full head
    if runtime == "litert":
        import litert_torch

        from edge_unlearn.deploy.runners_litert import with_tflite_meta
        from edge_unlearn.export.litert import _quantize_int8, restore_signature_outputs

        data = bytes(litert_torch.convert(module, example).model_content())
        if precision == "int8":
            data = restore_signature_outputs(_quantize_int8(data, calib))
        dst.write_bytes(with_tflite_meta(data, _meta(runtime, deployed)))
        return dst
    from edge_unlearn.export.executorch import lower_to_pte

    dst.write_bytes(lower_to_pte(module, example, _meta(runtime, deployed), calib if precision == "int8" else None))
    return dst


def _relabel_ir(model: Any, meta: Any, precision: str, deployed: Path, calib: Any, dst: Path) -> Path:
    import nncf
    import onnx
    import openvino as ov

    from edge_unlearn.deploy.onnx_meta import read_meta, write_meta
    from edge_unlearn.deploy.runners_openvino import write_ir_meta
    from edge_unlearn.deploy.structure_openvino import analyse_ir
    from edge_unlearn.export.onnx_export import export_from_model

    onnx_path = dst.with_suffix(".onnx")
    with contextlib.redirect_stdout(io.StringIO()):
        export_from_model(model, meta, onnx_path)
    proto = onnx.load(str(onnx_path))
    theirs = _meta("openvino", deployed)
    index = np.arange(theirs.num_classes, dtype=np.int64)
    index[list(theirs.forgotten_classes)] = theirs.num_classes
    (init,) = [i for i in proto.graph.initializer if i.name == "edge_unlearn_class_index"]
    init.CopyFrom(onnx.numpy_helper.from_array(index, init.name))
    write_meta(proto, dataclasses.replace(read_meta(onnx_path), forgotten_classes=theirs.forgotten_classes))
    onnx.save(proto, str(onnx_path))
    ir = ov.convert_model(str(onnx_path))
    if precision == "int8":
        ignored = analyse_ir(ir, read_meta(onnx_path)).mask_ops
        batches = [calib[i : i + 32] for i in range(0, len(calib), 32)]
        ir = nncf.quantize(
            ir, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=nncf.IgnoredScope(names=list(ignored))
        )
    write_ir_meta(ir, theirs)
    ov.save_model(ir, str(dst), compress_to_fp16=False)
    return dst


def _meta(runtime: str, path: Path) -> Any:
    """The edge-unlearn metadata of a converted file."""
    if runtime == "openvino":
        from edge_unlearn.deploy.runners_openvino import read_ir, read_ir_meta

        return read_ir_meta(read_ir(path), str(path))
    if runtime == "litert":
        from edge_unlearn.deploy.runners_litert import load_tflite, read_tflite_meta

        return read_tflite_meta(load_tflite(path), str(path))
    from edge_unlearn.pte.runner import load_pte, read_pte_meta

    return read_pte_meta(load_pte(path), str(path))


# ------------------------------------------------------------------------------------------------------- the cells


def validate(path: Path, bundle: Path, audit: bool = False) -> dict[str, Any]:
    """`validate [--audit] --json`: exit code, verdict and the figures a cell reports."""
    code, out, err = cli("validate", path, "--bundle", bundle, "--json", *(["--audit"] if audit else []))
    if code == 2 or not out.strip():
        return {"exit": code, "verdict": "refused", "error": err.strip()[-300:]}
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    row = {"exit": code, "verdict": report["verdict"]}
    row.update(
        {name: checks[name]["value"] for name in ("forget_acc", "retain_drop", "retain_agreement") if name in checks}
    )
    kept = [c for c in report.get("per_class", []) if not c["forgotten"] and c["n"]]
    if kept:  # the retained accuracy on the bundle (the model's own, not the runtime's drop)
        row["retain_acc"] = sum(c["acc"] * c["n"] for c in kept) / sum(c["n"] for c in kept)
    row["failed"] = [name for name, c in checks.items() if not c["passed"]]
    if audit:
        row["audit"] = {k: v for k, v in (report.get("audit") or {}).get("device", {}).items() if isinstance(v, float)}
    return row


def convert(
    runtime: str,
    precision: str,
    source: Path,
    dst: Path,
    data_spec: str,
    calib: int,
    audit: bool,
    max_disagreement: float | None = None,
) -> None:
    """`edge-unlearn convert` to ``dst``; INT8 calibrated on ``calib`` images of ``data_spec`` (retained classes);
    ``max_disagreement``: OpenVINO INT8 through NNCF's accuracy control (`convert --max-disagreement`)."""
    args = ["convert", source, "--to", runtime, "--precision", precision, "-o", dst, "-q"]
    args += ["--calib", data_spec, "--calib-samples", calib] if precision == "int8" else []
    args += (
        ["--max-disagreement", max_disagreement] if accuracy_controlled(runtime, precision, max_disagreement) else []
    )
    cli_ok(*args, *(["--audit"] if audit and runtime != "openvino" else []))


def accuracy_controlled(runtime: str, precision: str, max_disagreement: float | None) -> bool:
    """Whether the cell's conversion is NNCF's accuracy-controlled INT8 (OpenVINO INT8 with a bound given)."""
    return max_disagreement is not None and (runtime, precision) == ("openvino", "int8")


def run_cell(
    ctx: dict[str, Any], runtime: str, precision: str, max_disagreement: float | None = None
) -> dict[str, Any]:
    """One model x runtime x precision: validate, validate --audit, the two attacks. ``max_disagreement``: the
    OpenVINO INT8 cell (its deployed and audit IRs) is converted with NNCF's accuracy control; the attacker's
    relabelled original stays plainly quantized."""
    spec, work, data_spec = ctx["spec"], ctx["work"], ctx["data"]
    ext = {"openvino": ".xml", "litert": ".tflite", "executorch": ".pte"}[runtime]
    cell: dict[str, Any] = {"model": spec.name, "runtime": runtime, "precision": precision}
    missing = installed(runtime)
    if missing:
        return {**cell, "status": f"not installed ({missing})"}
    started = time.perf_counter()
    controlled = accuracy_controlled(runtime, precision, max_disagreement)
    stem = f"{spec.name}.{runtime}.{precision}" + (".ac" if controlled else "")
    deployed = work / f"{stem}{ext}"
    source = ctx["onnx"] if runtime == "openvino" else ctx["forgotten"]
    bound = max_disagreement if controlled else None
    try:
        convert(
            runtime, precision, source, deployed, data_spec, spec.calib_samples, audit=False, max_disagreement=bound
        )
    except RuntimeError as exc:
        return {**cell, "status": "convert failed", "error": str(exc)}
    cell["status"] = "ran"
    if controlled:
        cell["accuracy_control"] = accuracy_control_record(deployed)
    cell["validate"] = validate(deployed, ctx["bundle"])
    audit_file = work / f"{stem}.audit{ext}"
    try:  # OpenVINO: the audit export converted; LiteRT, ExecuTorch: the checkpoint converted with --audit
        audit_source = ctx["audit_onnx"] if runtime == "openvino" else ctx["forgotten"]
        convert(runtime, precision, audit_source, audit_file, data_spec, spec.calib_samples, True, bound)
        cell["audit"] = validate(audit_file, ctx["bundle"], audit=True)
    except RuntimeError as exc:
        cell["audit"] = {"verdict": "convert failed", "error": str(exc)}
    calib = ctx["calib"] if precision == "int8" else None
    attacks = {
        "fill": lambda: fill_attack(runtime, deployed, work / f"{stem}.fill{ext}"),
        "relabel": lambda: relabel_attack(
            runtime, precision, ctx["original"], deployed, calib, work / f"{stem}.relabel{ext}"
        ),
    }
    cell["attacks"] = {name: attack_row(make, ctx["bundle"]) for name, make in attacks.items()}
    cell["seconds"] = round(time.perf_counter() - started, 1)
    return cell


def accuracy_control_record(xml: Path) -> dict[str, Any]:
    """What `convert --max-disagreement` recorded in the IR (the agreement it reached, the ops left in float), and
    the IR's compute ops in float counted on the file itself."""
    import openvino as ov

    from edge_unlearn.export.openvino import float_compute_ops

    record = dict(_meta("openvino", xml).quantization.get("accuracy_control") or {})
    record["float_ops_in_ir"] = len(float_compute_ops(ov.Core().read_model(str(xml))))
    return record


def attack_row(make: Callable[[], Path], bundle: Path) -> dict[str, Any]:
    """`validate` on the tampered file ``make`` writes; an attack the runtime's tools cannot make is reported so."""
    try:
        path = make()
    except Exception as exc:  # noqa: BLE001 - the attacker's tool failed: reported, never counted as a gate result
        return {"verdict": "attack not made", "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return validate(path, bundle)


def prepare(spec: ModelSpec, work: Path) -> dict[str, Any]:
    """Original -> forgotten (NHLE, 3 classes) -> ONNX (plain and audit) -> `bundle --audit`, once per --work."""
    from edge_unlearn.deploy.onnx_meta import read_meta
    from edge_unlearn.export.quantize import calibration_inputs

    work.mkdir(parents=True, exist_ok=True)
    data_spec = subset(spec, work)
    original, train_seconds = original_checkpoint(spec, data_spec, work)
    forgotten = work / f"{spec.name}.forgotten.safetensors"
    onnx_path, audit_onnx, bundle = (work / f"{spec.name}{s}" for s in (".onnx", ".audit.onnx", ".eval.npz"))
    forget = ",".join(map(str, FORGET))
    if not forgotten.exists():
        cli_ok("forget", original, "--forget", forget, "--dataset", data_spec, "-o", forgotten, "-q")
    if not bundle.exists():
        cli_ok("export", forgotten, "-o", onnx_path, "-q")
        cli_ok("export", forgotten, "--audit", "-o", audit_onnx, "-q")
        per_class = ["--per-class", spec.test_per_class] if spec.test_per_class else []
        cli_ok(
            "bundle",
            forgotten,
            "--dataset",
            data_spec,
            "--audit",
            "--reference",
            original,
            *per_class,
            "-o",
            bundle,
            "-q",
        )
    calib, _ = calibration_inputs(data_spec, read_meta(onnx_path), spec.calib_samples)
    reference = validate(onnx_path, bundle)  # onnxruntime FP32: the figures every cell is read against
    return {
        "spec": spec,
        "work": work,
        "data": data_spec,
        "original": original,
        "forgotten": forgotten,
        "onnx": onnx_path,
        "audit_onnx": audit_onnx,
        "bundle": bundle,
        "calib": np.ascontiguousarray(calib, np.float32),
        "train_seconds": train_seconds,
        "onnxruntime_fp32": reference,
    }


# ------------------------------------------------------------------------------------------------------- the table


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)


def verdict_word(row: dict[str, Any] | None) -> str:
    if not row:
        return "—"
    return {"pass": "PASS", "fail": "FAIL"}.get(row.get("verdict", ""), row.get("verdict", "—"))


COLUMNS = (
    "model",
    "runtime",
    "precision",
    "validate",
    "forget_acc",
    "retain_acc",
    "retain_drop",
    "agreement",
    "audit runs (verdict)",
    "fill edited",
    "original relabelled",
)


def table(cells: list[dict[str, Any]]) -> str:
    """The cells as a markdown table: validate's verdict and figures, whether `validate --audit` ran (and its
    verdict), and each attack's verdict (FAIL: the gate caught it)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for c in cells:
        control = c.get("accuracy_control")
        precision = f"{c['precision']} (accuracy control ≤ {control['max_drop']})" if control else c["precision"]
        first = f"| {c['model']} | {c['runtime']} | {precision} |"
        if c.get("status") != "ran":
            lines.append(f"{first} {c.get('status')} |" + " — |" * (len(COLUMNS) - 4))
            continue
        v, audit, attacks = c.get("validate") or {}, c.get("audit") or {}, c.get("attacks") or {}
        figures = " | ".join(_fmt(v.get(k)) for k in ("forget_acc", "retain_acc", "retain_drop", "retain_agreement"))
        ran = "yes" if audit.get("exit") in (0, 1) else "no"
        lines.append(
            f"{first} {verdict_word(v)} | {figures} | {ran} ({verdict_word(audit)}) | "
            f"{verdict_word(attacks.get('fill'))} | {verdict_word(attacks.get('relabel'))} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    use_threads(args.threads, default=1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # OpenVINO's and NNCF's telemetry fork a process from a thread to send each event; in this many-threaded process
    # such a child can deadlock, and the interpreter then waits for it at exit forever. Both skip it under CI=true.
    os.environ.setdefault("CI", "true")
    specs = QUICK if args.quick else MODELS
    names = args.models.split(",") if args.models else list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise UsageError(f"unknown model {unknown[0]!r}; choose from {', '.join(specs)}")
    runtimes = args.runtimes.split(",") if args.runtimes else list(RUNTIMES)
    if set(runtimes) - set(RUNTIMES):
        raise UsageError(f"unknown runtime in {args.runtimes!r}; choose from {', '.join(RUNTIMES)}")
    work = Path(args.work) if args.work else SCRATCH / ("runtime_cells_quick" if args.quick else "runtime_cells")
    cells, models = [], {}
    for name in names:
        ctx = prepare(specs[name], work / name)
        models[name] = {
            "spec": dataclasses.asdict(ctx["spec"]),
            "data": ctx["data"],
            "train_seconds": ctx["train_seconds"],
            "onnxruntime_fp32": ctx["onnxruntime_fp32"],
        }
        print(f"{name}: onnxruntime FP32 {json.dumps(ctx['onnxruntime_fp32'])}", flush=True)
        for runtime in runtimes:
            controlled = (
                [("int8", args.max_disagreement)] if accuracy_controlled(runtime, "int8", args.max_disagreement) else []
            )
            for precision, bound in [*((p, None) for p in PRECISIONS), *controlled]:
                cell = run_cell(ctx, runtime, precision, bound)
                cells.append(cell)
                print(json.dumps(cell), flush=True)
    text = table(cells)
    print(text)
    # a run with accuracy control is an experiment beside the committed table: into the scratch unless told
    scratch = "runtime_cells_quick" if args.quick else "runtime_cells_ac" if args.max_disagreement is not None else None
    out = Path(args.out_dir) if args.out_dir else SCRATCH / scratch if scratch else results_dir("runtime_cells")
    report = {
        "forgotten_classes": list(FORGET),
        "attack_fill": ATTACK_FILL,
        "max_disagreement": args.max_disagreement,
        "models": models,
        "cells": cells,
        **provenance(MODULE, started=started, versions=runtime_versions()),
    }
    stem = scratch or "runtime_cells"
    write_results(report, out / f"{stem}.json", text, out / f"{stem}.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lenet/digits only, short training; into bench_out/")
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--runtimes", default=None, help=f"comma-separated, of {', '.join(RUNTIMES)}")
    parser.add_argument("--work", default=None, help="models and artefacts (reused); default bench_out/runtime_cells")
    parser.add_argument("--out-dir", default=None, help="where the JSON and table go")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1, or BENCH_THREADS)")
    parser.add_argument(
        "--max-disagreement",
        type=float,
        default=None,
        help="add an OpenVINO INT8 cell through NNCF's accuracy control (`convert --max-disagreement`), e.g. 0.01; "
        "results into bench_out/runtime_cells_ac unless --out-dir",
    )
    return run_reporting_errors(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
