"""Every edge runtime x precision on this CPU, side by side: p50 latency at batch 1 and 64, one thread.

For torchvision resnet18 and mobilenet_v3_small at 224² (random weights, seed 0, 10 classes, 3 forgotten by the
class mask -- latency does not depend on the weights' values), through the product's own path: `import`
(torchvision, ImageNet preprocessing), `export` (ONNX FP32 with the mask), `quantize` (onnxruntime INT8 in this
CPU's layout), `convert --to openvino` (IR FP32, FP16, NNCF INT8; also our INT8 ONNX on OpenVINO) and, where
litert-torch is installed, `convert --to litert` (FP32, INT8 full integer) and, where executorch is installed,
`convert --to executorch` (XNNPACK FP32, PT2E INT8) -- batch 1 files, so batch 64 is 64 invokes. Each artefact
runs through the product's runner (`edge_unlearn.deploy.bench.measure.bench_artefacts`), so the numbers are what
`edge-unlearn bench` reports. Calibration uses random normal inputs (timing only:
accuracy is not measured here). Ratio = p50 / onnxruntime FP32's p50 at the same batch.

    python -m benchmarks.runtimes --quick --work-dir /tmp/rt   # 20 iterations at batch 1, 3 at 64
    python -m benchmarks.runtimes                               # 100 / 10 iterations

Writes benchmarks/results/runtimes/runtimes[-quick].json and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import provenance, runtime_versions

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "runtimes"
MODELS = ("resnet18", "mobilenet_v3_small")
FORGET = (0, 1, 2)
NUM_CLASSES = 10
CALIB = 64


def make_checkpoint(arch: str, folder: Path) -> Path:
    """A torchvision classifier with random weights imported as an edge-unlearn checkpoint, FORGET masked."""
    import torch
    import torchvision

    from edge_unlearn.byom import ImportRequest, import_checkpoint
    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    weights = folder / f"{arch}.pt"
    torch.save(getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES).state_dict(), weights)
    imported = folder / f"{arch}.safetensors"
    import_checkpoint(ImportRequest(f"torchvision:{arch}", str(weights), str(imported), preset="imagenet"))
    ckpt = load_checkpoint(imported)
    ckpt.model.mask_classes(FORGET)
    forgotten = folder / f"{arch}.forgotten.safetensors"
    save_checkpoint(forgotten, ckpt.model, ckpt.meta)
    return forgotten


def make_artefacts(arch: str, folder: Path) -> list[tuple[str, str, Path, str | None]]:
    """(runtime, precision, path, provider) for every runtime installed here."""
    from edge_unlearn.export.onnx_export import export_onnx
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    fp32, int8 = folder / f"{arch}.onnx", folder / f"{arch}.int8.onnx"
    ckpt = folder / f"{arch}.forgotten.safetensors"
    calib = np.random.default_rng(0).standard_normal((CALIB, 3, 224, 224)).astype(np.float32)
    if not int8.is_file():  # made once per --work-dir
        make_checkpoint(arch, folder)
        with contextlib.redirect_stdout(io.StringIO()):
            export_onnx(ckpt, fp32)
            quantize_model(fp32, int8, QuantizeConfig(precision="int8"), calib_inputs=calib)
    runs = [
        ("onnxruntime", "fp32", fp32, "cpu"),
        ("onnxruntime", "int8", int8, "cpu"),
    ]
    runs += _checkpoint_runs(arch, folder, ckpt, calib)
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("openvino not installed: its rows are left out", file=sys.stderr)
        return runs
    from edge_unlearn.export.openvino import convert_openvino

    for precision in ("fp32", "fp16", "int8"):
        xml = folder / f"{arch}.{precision}.xml"
        if not xml.is_file():
            with contextlib.redirect_stdout(io.StringIO()):
                convert_openvino(fp32, xml, precision, calib_inputs=calib if precision == "int8" else None)
        runs.append(("openvino", precision, xml, None))
    runs.append(("openvino (onnx)", "int8", int8, "openvino"))
    return runs


#: runtimes converted from the checkpoint: (row name, the converter's package, edge_unlearn.export module and
#: function, file suffix)
CHECKPOINT_CONVERTERS = (
    ("litert", "litert_torch", "litert", "convert_litert", "tflite"),  # FP32, INT8 full integer
    ("executorch", "executorch", "executorch", "convert_executorch", "pte"),  # XNNPACK FP32, PT2E INT8
)


def _checkpoint_runs(arch: str, folder: Path, ckpt: Path, calib: np.ndarray) -> list[tuple[str, str, Path, None]]:
    """FP32 and INT8 rows of every :data:`CHECKPOINT_CONVERTERS` runtime whose converter is installed here."""
    from edge_unlearn import torch_runners  # noqa: F401  (registers the host's ExecuTorch runner, as the CLI does)

    runs = []
    for runtime, package, module, function, suffix in CHECKPOINT_CONVERTERS:
        try:
            importlib.import_module(package)
        except ImportError:
            print(f"{package} not installed: the {runtime} rows are left out", file=sys.stderr)
            continue
        convert = getattr(importlib.import_module(f"edge_unlearn.export.{module}"), function)
        for precision in ("fp32", "int8"):
            path = folder / f"{arch}.{precision}.{suffix}"
            if not path.is_file():
                with contextlib.redirect_stdout(io.StringIO()):
                    convert(ckpt, path, precision, calib_inputs=calib[:32] if precision == "int8" else None)
            runs.append((runtime, precision, path, None))
    return runs


def bench(path: Path, provider: str | None, batch: int, iterations: int) -> dict[str, Any]:
    from edge_unlearn.deploy.bench.measure import BenchConfig, bench_artefacts

    config = BenchConfig(batches=(batch,), iterations=iterations, warmup=2 if batch == 1 else 1, threads=1)
    (row,) = bench_artefacts([path], config, provider=provider).rows
    return {"p50_ms": row.p50_ms, "mean_ms": row.mean_ms, "iterations": row.iterations, "layout": row.quant_layout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 iterations at batch 1, 3 at batch 64")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work-dir", default=None, help="keep (and reuse) the artefacts here; default: a temp folder")
    args = parser.parse_args()
    iterations = {1: 20, 64: 3} if args.quick else {1: 100, 64: 10}
    rows: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            folder = Path(args.work_dir or tmp) / arch
            folder.mkdir(parents=True, exist_ok=True)
            for runtime, precision, path, provider in make_artefacts(arch, folder):
                row = {"model": arch, "runtime": runtime, "precision": precision}
                for batch, count in iterations.items():
                    row[f"b{batch}"] = bench(path, provider, batch, count)
                rows.append(row)
                print(
                    f"{arch} {runtime} {precision}: "
                    + ", ".join(f"b{b} {row[f'b{b}']['p50_ms']:.2f} ms" for b in iterations),
                    flush=True,
                )
    for row in rows:
        base = next(
            r for r in rows if r["model"] == row["model"] and r["runtime"] == "onnxruntime" and r["precision"] == "fp32"
        )
        for batch in iterations:
            row[f"b{batch}"]["ratio_to_ort_fp32"] = row[f"b{batch}"]["p50_ms"] / base[f"b{batch}"]["p50_ms"]
    from edge_unlearn.deploy.bench.measure import cpu_model

    result = {
        **provenance("benchmarks.runtimes"),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "threads": 1,
        "load_average": [round(v, 2) for v in os.getloadavg()],  # the 2 shared cores were busy: read ratios, not ms
        "iterations": iterations,
        "forgotten_classes": list(FORGET),
        "seconds": round(time.time() - started, 1),
        "versions": runtime_versions(),
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / f"runtimes{'-quick' if args.quick else ''}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows, list(iterations)))
    print(f"wrote {target.relative_to(ROOT)}")


def table(rows: list[dict[str, Any]], batches: list[int]) -> str:
    head = f"{'model':<20} {'runtime':<16} {'prec':<5}" + "".join(
        f" {'p50 b' + str(b) + ' ms':>12} {'x ORT fp32':>10}" for b in batches
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<20} {r['runtime']:<16} {r['precision']:<5}"
            + "".join(f" {r[f'b{b}']['p50_ms']:>12.2f} {r[f'b{b}']['ratio_to_ort_fp32']:>10.2f}" for b in batches)
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
