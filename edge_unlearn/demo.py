"""`edge-unlearn demo`: the whole job on scikit-learn's bundled digits, offline, in about a minute."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from .cli_common import to_json_text
from .workflows import ForgetRequest, evaluate_checkpoint, forget_checkpoint, retrain_checkpoint, train_checkpoint


def run_demo(out_dir: Path, forget_class: str = "3", deploy: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Train on digits, forget one class with NHLE, compare with retraining, then export/quantize/validate."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "records", ignore_errors=True)  # a rerun starts a fresh audit trail
    original, forgotten, retrained = out_dir / "original.safetensors", out_dir / "forgotten.safetensors", \
        out_dir / "retrained.safetensors"
    echo("1/5 train lenet on digits (scikit-learn's bundled 8×8 digits)")
    trained = train_checkpoint("digits", "lenet", original, progress=True)
    echo(f"    test accuracy {trained['test_accuracy']:.4f} in {trained['seconds']:.1f} s")
    echo(f"2/5 forget class {forget_class} with NHLE + class weight masking (32 samples, no retained data)")
    summary = forget_checkpoint(ForgetRequest(checkpoint=str(original), forget=(forget_class,), out=str(forgotten)))
    echo("3/5 retrain from scratch without it (the gold standard)")
    gold = retrain_checkpoint(original, (forget_class,), retrained, progress=True)
    gold_eval = evaluate_checkpoint(retrained, reference=original)
    rows = [
        ("forget_acc (deployed, mask on)", summary["forget_acc_before"], summary["forget_acc"], gold_eval["forget_acc"]),
        ("forget_acc_unmasked", summary["forget_acc_before"], summary["forget_acc_unmasked"],
         gold_eval["forget_acc_unmasked"]),
        ("retain_acc", summary["retain_acc_before"], summary["retain_acc"], gold_eval["retain_acc"]),
        ("probe_forget_acc", summary["probe_forget_acc_before"], summary["probe_forget_acc"],
         gold_eval["probe_forget_acc"]),
        ("seconds", trained["seconds"], summary["seconds"], gold["seconds"]),
    ]
    echo(f"    {'figure':32s} {'original':>9s} {'NHLE':>9s} {'retrain':>9s}")
    for name, a, b, c in rows:
        echo(f"    {name:32s} {a:9.4f} {b:9.4f} {c:9.4f}")
    result = {"train": trained, "forget": summary, "retrain": gold, "retrain_eval": gold_eval}
    if deploy:
        echo("4/5 export to ONNX, quantize to INT8 (calibrated on retained classes), validate on onnxruntime")
        from .cli_export import deployment_demo

        result["deploy"] = deployment_demo(forgotten, "digits", out_dir, echo=echo)
    (out_dir / "demo.json").write_text(to_json_text(result))
    if deploy:
        from .cli_report import demo_bench_and_report

        echo("5/5 benchmark latency on this CPU and write the audit report")
        result["report"] = demo_bench_and_report(
            out_dir, [forgotten, out_dir / "model.onnx", out_dir / "model.int8.onnx"], echo=echo)
    echo(f"everything is in {out_dir}/: demo.json has every figure, report.html the audit report, "
         f"`edge-unlearn verify {out_dir}` re-checks every hash")
    return result
