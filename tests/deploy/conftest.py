"""Fixtures of the bench/report tests: tiny real ONNX models (built with onnx.helper, carrying the edge-unlearn
metadata, so the real onnxruntime runner opens them) and a small run folder. No training, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SOURCE_SHA = "ab" * 32
CLASSES = ("zero", "one", "two", "three")


def tiny_onnx(path: Path, precision: str = "fp32", hidden: int = 32, seed: int = 0) -> Path:
    """input [B, 1, 8, 8] -> Flatten -> Gemm(64, hidden) -> Relu -> Gemm(hidden, 4) -> logits [B, 4];
    class 3 declared forgotten in the metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_unlearn.deploy.onnx_meta import OnnxMeta, write_meta

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((64, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(hidden, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(4, np.float32), "b2")
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    write_meta(
        model,
        OnnxMeta(
            num_classes=4,
            class_names=CLASSES,
            forgotten_classes=(3,),
            input_shape=(1, 8, 8),
            normalization={"mean": [0.0], "std": [1.0]},
            source_sha256=SOURCE_SHA,
            arch="tiny",
            dataset="digits",
            precision=precision,
        ),
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    # the "int8" one is a smaller float graph labelled int8: the bench only reads the label, and a real QDQ
    # model would need calibration (tested in tests/export)
    return tiny_onnx(folder / "tiny.onnx"), tiny_onnx(folder / "tiny.int8.onnx", precision="int8", hidden=8)


def validation_json(model: str, precision: str, verdict: str) -> dict:
    checks = [
        {
            "name": "forget_acc",
            "value": 0.0 if verdict == "pass" else 0.4,
            "op": "<=",
            "threshold": 0.01,
            "passed": verdict == "pass",
            "detail": "",
        },
        {"name": "retain_drop", "value": 0.002, "op": "<=", "threshold": 0.01, "passed": True, "detail": ""},
    ]
    per_class = [
        {
            "class": k,
            "name": n,
            "forgotten": k == 3,
            "n": 10,
            "acc": 0.0 if k == 3 else 0.9,
            "ref_acc": 0.0 if k == 3 else 0.92,
            "agreement": None if k == 3 else 0.98,
            "wins": 9,
        }
        for k, n in enumerate(CLASSES)
    ]
    env = {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "precision": precision}
    return {
        "verdict": verdict,
        "model": model,
        "samples": 40,
        "runtime": "onnxruntime",
        "provider": "CPUExecutionProvider",
        "precision": precision,
        "device": "CPU",
        "thresholds": {},
        "checks": checks,
        "per_class": per_class,
        "bundle": {},
        "environment": env,
        "seconds": 0.1,
        "created": f"2026-01-01T00:00:0{len(precision)}Z",
    }


def demo_json() -> dict:
    per = [0.95, 0.97, 0.93, 0.96]
    return {
        "train": {"checkpoint": "original.safetensors", "sha256": "cd" * 32, "per_class_accuracy": per},
        "forget": {
            "checkpoint": "forgotten.safetensors",
            "parent_sha256": "cd" * 32,
            "method": "nhle",
            "params": {"steps": 20},
            "forget_classes": [3],
            "forget_class_names": ["three"],
            "all_forgotten_classes": [3],
            "samples_used": 32,
            "seconds": 0.2,
            "forget_acc": 0.0,
            "forget_acc_unmasked": 0.1,
            "retain_acc": 0.95,
            "retain_acc_before": 0.953,
            "retain_drop": 0.003,
            "probe_forget_acc": 0.5,
            "probe_forget_acc_before": 0.96,
            "forget_acc_before": 0.96,
            "per_class_accuracy": [0.95, 0.97, 0.92, 0.0],
            "per_class_accuracy_before": per,
        },
        "retrain_eval": {
            "forget_acc": 0.0,
            "forget_acc_unmasked": 0.0,
            "retain_acc": 0.96,
            "probe_forget_acc": 0.4,
            "class_names": list(CLASSES),
            "per_class_accuracy": [0.96, 0.97, 0.94, 0.0],
        },
    }


def header_only_checkpoint(path: Path, forgotten: tuple[int, ...], lineage: list[dict], parent: str | None) -> Path:
    """A safetensors file with no tensors and an edge-unlearn header (what the report reads, without torch)."""
    import struct

    meta = {
        "arch": "lenet",
        "num_classes": 4,
        "class_names": list(CLASSES),
        "input_shape": [1, 8, 8],
        "dataset": "digits",
        "forgotten_classes": list(forgotten),
        "lineage": lineage,
        "parent_sha256": parent,
    }
    header = json.dumps({"__metadata__": {"edge_unlearn": json.dumps({"format": "edge-unlearn/1", **meta})}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.fixture()
def run_folder(tmp_path, tiny_models) -> Path:
    """A run folder as the demo leaves it (demo.json, models, validation records), benched for real."""
    import shutil

    from edge_unlearn.cli.report import record_to_run_dir
    from edge_unlearn.deploy.bench import BenchConfig, bench_artefacts

    run = tmp_path / "run"
    run.mkdir()
    fp32, int8 = shutil.copy(tiny_models[0], run / "model.onnx"), shutil.copy(tiny_models[1], run / "model.int8.onnx")
    (run / "demo.json").write_text(json.dumps(demo_json()))
    header_only_checkpoint(run / "original.safetensors", (), [], None)
    from edge_unlearn.fileio import sha256_file

    parent = sha256_file(run / "original.safetensors")
    header_only_checkpoint(
        run / "forgotten.safetensors",
        (3,),
        [{"method": "nhle", "params": {"steps": 20}, "forget_classes": [3]}],
        parent,
    )
    record_to_run_dir(run, "validate", validation_json(str(fp32), "fp32", "pass"), [fp32])
    record_to_run_dir(run, "validate", validation_json(str(int8), "int8", "fail"), [int8])
    bench = bench_artefacts([fp32, int8], BenchConfig(batches=(1, 4), warmup=1, iterations=5), provider="cpu")
    record_to_run_dir(run, "bench", bench.to_json(), [fp32, int8])
    return run
