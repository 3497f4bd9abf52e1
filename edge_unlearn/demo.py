"""`edge-unlearn demo`: the whole job on scikit-learn's bundled digits, offline, in about a minute."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .core.jsontext import to_json_text
from .workflows import ForgetRequest, evaluate_checkpoint, forget_checkpoint, retrain_checkpoint, train_checkpoint


def run_demo(
    out_dir: Path,
    forget_class: str = "3",
    deploy: bool = True,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> dict:
    """Train on digits, forget one class with NHLE, compare with retraining, then export/quantize/validate,
    bench and report. ``progress``: show progress bars (the CLI turns them on only on a terminal)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "records", ignore_errors=True)  # a rerun starts a fresh audit trail
    original, forgotten, retrained = (
        out_dir / "original.safetensors",
        out_dir / "forgotten.safetensors",
        out_dir / "retrained.safetensors",
    )
    echo("1/5 train lenet on digits (scikit-learn's bundled 8×8 digits)")
    trained = train_checkpoint("digits", "lenet", original, progress=progress)
    echo(f"    test accuracy {trained['test_accuracy']:.4f} in {trained['seconds']:.1f} s")
    echo(f"2/5 forget class {forget_class} with NHLE + class weight masking (32 samples, no retained data)")
    summary = forget_checkpoint(ForgetRequest(checkpoint=str(original), forget=(forget_class,), out=str(forgotten)))
    echo("3/5 retrain from scratch without it (the gold standard)")
    gold = retrain_checkpoint(original, (forget_class,), retrained, progress=progress)
    gold_eval = evaluate_checkpoint(retrained, reference=original)
    rows = [
        (
            "forget_acc (deployed, mask on)",
            summary["forget_acc_before"],
            summary["forget_acc"],
            gold_eval["forget_acc"],
        ),
        (
            "forget_acc_unmasked",
            summary["forget_acc_before"],
            summary["forget_acc_unmasked"],
            gold_eval["forget_acc_unmasked"],
        ),
        ("retain_acc", summary["retain_acc_before"], summary["retain_acc"], gold_eval["retain_acc"]),
        (
            "probe_forget_acc",
            summary["probe_forget_acc_before"],
            summary["probe_forget_acc"],
            gold_eval["probe_forget_acc"],
        ),
        ("seconds", trained["seconds"], summary["seconds"], gold["seconds"]),
    ]
    echo(f"    {'figure':32s} {'original':>9s} {'NHLE':>9s} {'retrain':>9s}")
    for name, a, b, c in rows:
        echo(f"    {name:32s} {a:9.4f} {b:9.4f} {c:9.4f}")
    result = {"train": trained, "forget": summary, "retrain": gold, "retrain_eval": gold_eval}
    if deploy:
        echo("4/5 export to ONNX, quantize to INT8 (calibrated on retained classes), validate on onnxruntime")
        result["deploy"] = deployment_demo(forgotten, "digits", out_dir, echo=echo)
    (out_dir / "demo.json").write_text(to_json_text(result))
    if deploy:
        echo("5/5 benchmark latency on this CPU and write the audit report")
        result["report"] = demo_bench_and_report(
            out_dir, [forgotten, out_dir / "model.onnx", out_dir / "model.int8.onnx"], echo=echo
        )
    echo(
        f"everything is in {out_dir}/: demo.json has every figure, report.html the audit report, "
        f"`edge-unlearn verify {out_dir}` re-checks every hash"
    )
    return result


def deployment_demo(
    checkpoint_path: Path, dataset_spec: str, out_dir: Path, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """export -> INT8 (calibrated on retained classes) -> bundle -> validate FP32 and INT8; returns the verdicts."""
    from edge_unlearn.deploy.validate import validate_model
    from edge_unlearn.export.bundle import make_bundle
    from edge_unlearn.export.onnx_export import export_onnx
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8, bundle = out_dir / "model.onnx", out_dir / "model.int8.onnx", out_dir / "eval.npz"
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's and calibrator's chatter
        exported = export_onnx(checkpoint_path, fp32, echo=None)
    echo(f"export  -> {fp32}: {exported.parity.line()}")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's and calibrator's chatter
        # the demo validates and benches on this CPU: the CPU layout, as `quantize` picks by default
        quantized = quantize_model(fp32, int8, QuantizeConfig(precision="int8", target="cpu"), calib=dataset_spec)
    layout = quantized.layout.name if quantized.layout else "int8"
    echo(f"quantize -> {int8} (INT8 {layout} for this CPU, calibrated on retained classes)")
    made = make_bundle(checkpoint_path, dataset_spec, bundle)
    echo(f"bundle  -> {bundle}: {len(made.labels)} test samples")
    results: dict[str, Any] = {"artifacts": {"fp32": str(fp32), "int8": str(int8), "bundle": str(bundle)}}
    for name, path in (("fp32", fp32), ("int8", int8)):
        report = validate_model(path, bundle, provider="cpu")
        results[name] = {
            "verdict": "pass" if report else "fail",
            "forget_acc": report.figure("forget_acc"),
            "retain_drop": report.figure("retain_drop"),
            "retain_agreement": report.figure("retain_agreement"),
            "failed": [c.name for c in report.failed],
        }
        echo(
            f"validate {name}: {'PASS' if report else 'FAIL'}  forget_acc {report.figure('forget_acc')}  "
            f"retain_drop {report.figure('retain_drop')}  agreement {report.figure('retain_agreement')}"
        )
    results["passed"] = all(results[k]["verdict"] == "pass" for k in ("fp32", "int8"))
    return results


def demo_bench_and_report(
    out_dir: Path,
    artefacts: Sequence[Path],
    echo: Callable[[str], None] = print,
    iterations: int = 20,
    threads: int | None = 1,
) -> dict[str, Any]:
    """The demo's last step: bench the artefacts on CPU (batches 1/8/64; one thread by default, which is fair
    between runtimes and stable on a busy machine), validate any not yet validated against the demo's bundle,
    record it all in ``out_dir``, render ``report.html`` and write the manifest. Call it after demo.json is
    written (the report reads the figures from it)."""
    from edge_unlearn.deploy.bench import BenchConfig, bench_artefacts
    from edge_unlearn.deploy.report import render_report
    from edge_unlearn.deploy.rundir import read_records, record

    out_dir = Path(out_dir)
    artefacts = [Path(a) for a in artefacts if Path(a).is_file()]
    result: dict[str, Any] = {}
    bundle = out_dir / "eval.npz"
    validated = {Path(str(r["payload"].get("model"))).name for r in read_records(out_dir, "validate")}
    if bundle.is_file():
        from edge_unlearn.deploy.validate import validate_model

        for path in artefacts:
            if path.name in validated or path.suffix.lower() not in (".onnx", ".safetensors"):
                continue
            report = validate_model(path, bundle, provider="cpu")
            json_path = out_dir / f"validate-{path.stem.replace('.', '-')}.json"
            report.write_json(json_path)
            record(out_dir, "validate", report.to_json(), [path, bundle])
            echo(
                f"validate {path.name} [{report.environment.get('runtime')}/{report.environment.get('precision')}]: "
                f"{'PASS' if report else 'FAIL'}"
            )
    echo(f"bench {', '.join(a.name for a in artefacts)} on CPU, batches 1/8/64, threads {threads or 'default'}")
    config = BenchConfig(batches=(1, 8, 64), warmup=3, iterations=iterations, threads=threads)
    bench = bench_artefacts(artefacts, config, provider="cpu", keep_going=True)
    echo(bench.table())
    bench.write_json(out_dir / "bench.json")
    bench.write_csv(out_dir / "bench.csv")
    bench.plot(out_dir / "latency.png")
    record(out_dir, "bench", bench.to_json(), artefacts)
    html = render_report(out_dir)
    echo(f"report -> {html} (manifest.json beside it; check it later with `edge-unlearn verify {out_dir}`)")
    result.update(
        bench=str(out_dir / "bench.json"),
        report=str(html),
        manifest=str(out_dir / "manifest.json"),
        ratios=bench.ratios(),
    )
    return result
