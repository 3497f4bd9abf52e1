"""Feature-level audit after quantization (issue #15 part 3): `validate --audit` on the NHLE default, the original
(masked only) and the retrained model, in FP32, INT8 (cpu and tensorrt layouts) and FP16, with thresholds from the
retrained model: the prototype attack and the probe on the features, the output probe on the retained logits, and
(issue #28) the deployed answers on the forgotten class against the retrained models' (entropy range; TV within
their seed-to-seed floor + 0.05 when two or more are given: ``--retrained A B``). Prints a table; writes benchmarks/results/audit_quantized/audit_quantized_<dataset>_<arch>_c<class>.json.

    python -m benchmarks.audit_quantized --dataset npz:../shared/data/mnist.npz --arch lenet --forget 3
    python -m benchmarks.audit_quantized --quick    # digits, short recipe, FP32 and INT8 (cpu) only, into --work

Every step is an `edge-unlearn` command (run in a subprocess, exactly as a user would); checkpoints are cached in
--work (default bench_out/audit_quantized/<dataset>_<arch>_c<class>) with the command that made them and the NHLE
config version, so a re-run only redoes the deployment side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import SCRATCH, provenance, results_dir, write_results
from edge_unlearn.unlearn.nhle import NHLE_CONFIG_VERSION

CLI = [sys.executable, "-m", "edge_unlearn.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc


#: the step that makes the masked-only original (in this process: no `edge-unlearn` command does only that)
MASK_ONLY = "mask-only"
#: the models a run audits: NHLE, the original with only the class masked, and the (first) retrained model
AUDITED = ("nhle", "masked", "retrain")


def mask_only(original: Path, forget: str, out: Path) -> None:
    """The original with class ``forget`` (index or name) masked and nothing else changed."""
    from dataclasses import replace

    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(original)
    cls = int(forget) if forget.isdigit() else loaded.meta.class_names.index(forget)
    loaded.model.mask_classes([cls])
    save_checkpoint(out, loaded.model, replace(loaded.meta, forgotten_classes=(cls,)))


#: the test fixture's short recipe for ``--quick`` (the default recipe otherwise)
QUICK_RECIPE = ["--epochs", "1", "--min-steps", "150"]
PRECISIONS = (
    ("int8-cpu", ["--precision", "int8", "--target", "cpu"]),
    ("int8-tensorrt", ["--precision", "int8", "--target", "tensorrt"]),
    ("fp16", ["--precision", "fp16"]),
)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--forget", default="3")
    parser.add_argument("--work", default=None)
    parser.add_argument(
        "--original",
        type=Path,
        default=None,
        help="an existing original checkpoint instead of training one (e.g. a CIFAR-10 model)",
    )
    parser.add_argument(
        "--retrained",
        type=Path,
        nargs="+",
        default=None,
        help="existing models retrained without --forget (different seeds) instead of retraining one; the first "
        "is audited as 'retrain', all of them form the band of the output checks",
    )
    parser.add_argument(
        "--set",
        dest="nhle_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="NHLE parameter for the 'nhle' model (repeatable), e.g. --set entropy_ratio=0.7",
    )
    parser.add_argument(
        "--models",
        default=",".join(AUDITED),
        help=f"which of {', '.join(AUDITED)} to audit (comma-separated; e.g. nhle for one more NHLE setting "
        "against rows already measured)",
    )
    parser.add_argument("--quick", action="store_true", help="digits, short recipe, FP32 and INT8 (cpu) only")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: see above)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.quick:
        args.dataset = "digits"
    audited = [m.strip() for m in args.models.split(",") if m.strip()]
    if not audited or set(audited) - set(AUDITED):
        print(
            f"error: --models takes a comma-separated subset of {', '.join(AUDITED)}, got {args.models!r}",
            file=sys.stderr,
        )
        return 2

    for option, path in (("--original", args.original), *(("--retrained", r) for r in args.retrained or ())):
        if path is not None and not path.is_file():
            print(f"error: {option} {path} is not a file; give an edge-unlearn checkpoint", file=sys.stderr)
            return 2
    tag = f"{Path(args.dataset.split(':')[-1]).stem}_{args.arch}_c{args.forget}"
    work = Path(args.work or SCRATCH / "audit_quantized" / (tag + ("_quick" if args.quick else "")))
    work.mkdir(parents=True, exist_ok=True)
    orig, nhle, masked, gold = (work / f"{n}.safetensors" for n in ("original", "nhle", "masked", "retrain"))
    orig, gold = args.original or orig, (args.retrained or [gold])[0]
    band = args.retrained or [gold]
    seconds: dict[str, float] = {}
    steps = [
        (
            orig,
            ["train", "--dataset", args.dataset, "--arch", args.arch, "--device", "cpu", "-o", orig]
            + (QUICK_RECIPE if args.quick else []),
        ),
        (
            nhle,
            ["forget", orig, "--forget", args.forget, "--device", "cpu", "--no-eval", "-o", nhle]
            + [a for kv in args.nhle_set for a in ("--set", kv)],
        ),
        # the original with the class masked and nothing else (no CLI method does only that)
        (masked, [MASK_ONLY, orig, "--forget", args.forget, "-o", masked]),
        (gold, ["retrain", orig, "--forget", args.forget, "-o", gold]),
    ]
    given = {p for p in (args.original, *(args.retrained or ())) if p is not None}
    needed = {
        orig,
        *(ckpt for ckpt, name in ((nhle, "nhle"), (masked, "masked"), (gold, "retrain")) if name in audited),
    }
    for path, cmd in [(path, cmd) for path, cmd in steps if path not in given and path in needed]:
        # a cached checkpoint is reused only if the same command made it with the same NHLE config version
        # (a v1-era nhle.safetensors must not stand in for the current default)
        made_by = {"command": [str(a) for a in cmd], "nhle_config_version": NHLE_CONFIG_VERSION}
        sidecar = path.with_suffix(".made_by.json")
        if not (path.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == made_by):
            t0 = time.perf_counter()
            mask_only(orig, args.forget, masked) if cmd[0] == MASK_ONLY else run(*cmd, "-q")
            seconds[path.stem] = time.perf_counter() - t0
            sidecar.write_text(json.dumps(made_by))
    rows = []
    for key, name, ckpt in (
        ("nhle", "nhle", nhle),
        ("masked", "original (masked)", masked),
        ("retrain", "retrain", gold),
    ):
        if key not in audited:
            continue
        stem = ckpt.stem
        bundle = work / f"{stem}.audit.npz"
        extra = ["--reference", orig] if stem == "nhle" else []
        retrained = [a for r in band for a in ("--retrained", r)]
        run("bundle", ckpt, "--audit", *retrained, *extra, "-o", bundle, "-q")
        fp32 = work / f"{stem}.audit.onnx"
        run("export", ckpt, "--audit", "-o", fp32, "-q")
        models = {"fp32": fp32}
        for label, opts in PRECISIONS[:1] if args.quick else PRECISIONS:
            models[label] = work / f"{stem}.audit.{label}.onnx"
            run("quantize", fp32, *opts, "--calib", args.dataset, "-o", models[label], "-q")
        for label, model in models.items():
            proc = run("validate", model, "--bundle", bundle, "--audit", "--provider", "cpu", "--json", check=False)
            if proc.returncode not in (0, 1):
                raise SystemExit(f"validate {model} failed: {proc.stderr.strip()[-500:]}")
            report = json.loads(proc.stdout)
            audit = report["audit"]
            failed = [c["name"] for c in report["checks"] if not c["passed"]]
            outputs = audit.get("outputs") or {}
            rows.append(
                {
                    "model": name,
                    "precision": label,
                    "exit": proc.returncode,
                    "probe_forget": audit["device"]["probe_forget_acc"],
                    "logit_probe_forget": audit["device"].get("logit_probe_forget_acc"),
                    "fp32_logit_probe": audit["fp32"].get("logit_probe_forget_acc"),
                    "retrain_logit_probe": (audit.get("retrained") or {}).get("logit_probe_forget_acc"),
                    "max_logit_probe": audit["thresholds"].get("max_logit_probe"),
                    "prototype": audit["device"]["prototype_forget_acc"],
                    "fp32_prototype": audit["fp32"]["prototype_forget_acc"],
                    "retrain_prototype": (audit.get("retrained") or {}).get("prototype_forget_acc"),
                    "max_probe": audit["thresholds"]["max_probe"],
                    "max_prototype": audit["thresholds"]["max_prototype"],
                    "feature_rel_error": audit["feature_relative_error"],
                    "out_entropy": outputs.get("out_entropy"),
                    "out_entropy_band": [outputs.get("entropy_low"), outputs.get("entropy_high")],
                    "out_tv": outputs.get("out_tv"),
                    "max_out_tv": outputs.get("max_tv"),
                    "failed": failed,
                    "weight_steps": audit.get("weight_steps") if label == "fp32" else None,
                }
            )
    print(
        f"{'model':<18} {'precision':<14} {'exit':>4} {'probe':>7} {'proto':>7} {'fp32':>7} {'retrain':>7} "
        f"{'max':>6} {'out probe':>9} {'fp32':>7} {'retrain':>7} {'max':>6} {'feat err':>8} {'entropy':>7} "
        f"{'band':>13} {'tv':>6} {'max':>6}  failed"
    )
    for r in rows:
        print(
            f"{r['model']:<18} {r['precision']:<14} {r['exit']:>4} {r['probe_forget']:>7.4f} {r['prototype']:>7.4f} "
            f"{r['fp32_prototype']:>7.4f} {r['retrain_prototype']:>7.4f} {r['max_prototype']:>6.3f} "
            f"{r['logit_probe_forget']:>9.4f} {r['fp32_logit_probe']:>7.4f} {r['retrain_logit_probe']:>7.4f} "
            f"{r['max_logit_probe']:>6.3f} {r['feature_rel_error']:>8.4f} {_f(r['out_entropy']):>7} "
            f"{_f(r['out_entropy_band'][0]) + '-' + _f(r['out_entropy_band'][1]):>13} {_f(r['out_tv']):>6} "
            f"{_f(r['max_out_tv']):>6}  {', '.join(r['failed']) or '-'}"
        )
    steps_report = next((r["weight_steps"] for r in rows if r["weight_steps"]), None)
    if steps_report:
        print(
            f"NHLE weight edits: {steps_report['changed']} changed; below half an INT8 step "
            f"{steps_report['int8_below_half_step']:.4f}, below half an FP16 step {steps_report['fp16_below_half_step']:.4f}"
        )
    out = args.out or (work if args.quick else results_dir("audit_quantized")) / f"audit_quantized_{tag}.json"
    report = {
        "dataset": args.dataset,
        "arch": args.arch,
        "forget": args.forget,
        "rows": rows,
        "seconds": seconds,  # of each checkpoint made in this run
        "original": str(orig),
        "retrained": [str(r) for r in band],
        "nhle_set": args.nhle_set,
        "models": audited,
        "total_seconds": time.perf_counter() - started,
        **provenance("benchmarks.audit_quantized", argv),
    }
    write_results(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
