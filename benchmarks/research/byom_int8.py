"""Why INT8 of a weak imported model agrees less with FP32 (issue #11): quantization variants side by side.

For each FP32 ONNX model and its evaluation bundle (what ``python -m benchmarks.byom`` leaves in ``WORK/NAME.deploy``),
quantizes with variants of the cpu layout (the default ``quantize`` output on this CPU) and of the tensorrt
layout, and prints, per variant: top-1 agreement with the FP32 reference on the bundle's retained-class samples
(validate's ``retain_agreement``, gate 0.99), retained accuracy drop, and where the disagreements sit: the
median FP32 top-1/top-2 logit margin of the samples that flip vs of all samples. A sensitivity pass keeps one
layer at a time in float (the few largest) to show which layers lose most.

    python -m benchmarks.research.byom_int8 --model WORK/resnet18.deploy --calib npz:WORK/subset.npz \\
        --json bench_out/byom_int8.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.harness import provenance, write_results
from edge_unlearn.deploy.bundle import load_bundle
from edge_unlearn.deploy.onnx_meta import load_onnx, mask_node_names, read_meta
from edge_unlearn.export.quant_layout import CpuFeatures, choose_layout, read_cpu_features
from edge_unlearn.export.quantize import QuantizeConfig, calibration_inputs, quantize_int8_proto, quantize_model

VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))


def run(path: Path, inputs: np.ndarray, meta) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run([meta.output_name], {meta.input_name: inputs[i : i + 256]})[0] for i in range(0, len(inputs), 256)]
    )


def figures(logits: np.ndarray, bundle, ref_pred: np.ndarray, margin: np.ndarray) -> dict:
    """Agreement with the FP32 reference on retained-class samples, the accuracy drop, and the logit error: the
    median over samples of max |logit - FP32 logit| (retained columns), and how many samples have an FP32 top-1/
    top-2 margin below twice that error (the ones any perturbation of that size can flip)."""
    retained = ~np.isin(bundle.labels, bundle.forgotten_classes)
    columns = [c for c in range(logits.shape[1]) if c not in bundle.forgotten_classes]
    pred = logits.argmax(1)
    flips = retained & (pred != ref_pred)
    acc = float((pred[retained] == bundle.labels[retained]).mean())
    ref_acc = float((ref_pred[retained] == bundle.labels[retained]).mean())
    error = np.abs(logits[:, columns] - bundle.reference_logits[:, columns]).max(1)
    typical = float(np.median(error[retained]))
    return {
        "agreement": round(float(1 - flips.sum() / retained.sum()), 4),
        "retain_drop": round(ref_acc - acc, 4),
        "flips": int(flips.sum()),
        "median_logit_error": round(typical, 4),
        "share_margin_below_2x_error": round(float((margin[retained] < 2 * typical).mean()), 4),
        "median_margin_flipped": round(float(np.median(margin[flips])), 3) if flips.any() else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a deploy folder (model.onnx + eval.npz)")
    parser.add_argument("--calib", action="append", required=True, help="calibration dataset spec, one per --model")
    parser.add_argument("--sensitivity", type=int, default=6, help="layers kept in float one at a time (0: skip)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cpu = read_cpu_features()
    results = []
    for folder, calib in zip(args.model, args.calib):
        folder = Path(folder)
        fp32, bundle = folder / "model.onnx", load_bundle(folder / "eval.npz")
        meta = read_meta(fp32)
        ref = bundle.reference_logits.copy()
        ref[:, list(bundle.forgotten_classes)] = -np.inf
        ref_pred = ref.argmax(1)
        top2 = np.sort(np.where(np.isfinite(ref), ref, -1e30), axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        retained = ~np.isin(bundle.labels, bundle.forgotten_classes)
        row = {
            "model": str(folder),
            "samples": int(retained.sum()),
            "calib": calib,
            "median_margin_all": round(float(np.median(margin[retained])), 3),
            "fp32": figures(run(fp32, bundle.inputs, meta), bundle, ref_pred, margin),
            "variants": {},
        }
        proto = load_onnx(fp32)
        mask = mask_node_names(proto)
        first = [n.name for n in proto.graph.node if meta.input_name in n.input]
        cpu_layout, vnni_layout = choose_layout("cpu", cpu), choose_layout("cpu", VNNI)
        trt_layout = choose_layout("tensorrt", cpu)
        calib_cache: dict[int, np.ndarray] = {}

        def inputs_for(n: int) -> np.ndarray:
            if n not in calib_cache:
                calib_cache[n] = calibration_inputs(calib, meta, n)[0]
            return calib_cache[n]

        base = QuantizeConfig(precision="int8", target="cpu")
        variants = {
            f"cpu {cpu_layout.name}, per-channel, minmax, 256 (default)": (base, cpu_layout, [], 256),
            "cpu, per-tensor weights": (replace(base, per_channel=False), cpu_layout, [], 256),
            "cpu, entropy calibration (2048 bins)": (replace(base, calib_method="entropy"), cpu_layout, [], 256),
            "cpu, percentile calibration": (replace(base, calib_method="percentile"), cpu_layout, [], 256),
            "cpu, 1024 calibration samples": (base, cpu_layout, [], 1024),
            "cpu, 32 calibration samples": (base, cpu_layout, [], 32),
            "cpu, first layer float": (base, cpu_layout, first, 256),
            f"cpu {vnni_layout.name} (full-range weights, VNNI CPUs)": (base, vnni_layout, [], 256),
            f"tensorrt {trt_layout.name}, first layer float": (
                replace(base, target="tensorrt"),
                trt_layout,
                first,
                256,
            ),
            "dynamic (weights only)": (replace(base, mode="dynamic"), choose_layout("cpu", cpu, mode="dynamic"), [], 0),
        }
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "fp16.onnx"  # a perturbation ~100x smaller than INT8's: how fragile is the argmax?
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                quantize_model(fp32, out, QuantizeConfig(precision="fp16", target="cpu"))
            row["variants"]["fp16 (onnxruntime converter)"] = figures(
                run(out, bundle.inputs, meta), bundle, ref_pred, margin
            )
            print(f"{folder.name:28s} {'fp16':58s} {json.dumps(row['variants']['fp16 (onnxruntime converter)'])}")
            for name, (config, layout, extra, n) in variants.items():
                out = Path(tmp) / "q.onnx"
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    quantize_int8_proto(
                        fp32, out, inputs_for(n) if n else None, meta.input_name, config, mask + extra, layout
                    )
                row["variants"][name] = figures(run(out, bundle.inputs, meta), bundle, ref_pred, margin)
                print(f"{folder.name:28s} {name:58s} {json.dumps(row['variants'][name])}", flush=True)
            if args.sensitivity:
                # one layer at a time in float: the conv/gemm nodes, largest weight count first
                from onnx import numpy_helper

                sizes = {t.name: numpy_helper.to_array(t).size for t in proto.graph.initializer}
                layers = sorted(
                    (n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")),
                    key=lambda n: -max((sizes.get(i, 0) for i in n.input), default=0),
                )
                weighted = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
                picked = [n.name for n in layers[: max(0, args.sensitivity - 2)]] + weighted[:1] + weighted[-1:]
                row["sensitivity"] = {}
                for name in dict.fromkeys(picked):
                    out = Path(tmp) / "s.onnx"
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        quantize_int8_proto(
                            fp32, out, inputs_for(256), meta.input_name, base, mask + [name], cpu_layout
                        )
                    row["sensitivity"][name] = figures(run(out, bundle.inputs, meta), bundle, ref_pred, margin)
                    print(f"{folder.name:28s} float {name:52s} {json.dumps(row['sensitivity'][name])}", flush=True)
        results.append(row)
    if args.json:
        write_results(
            {"rows": results, **provenance("benchmarks.research.byom_int8", argv, cpu=cpu.summary())}, Path(args.json)
        )


if __name__ == "__main__":
    main()
