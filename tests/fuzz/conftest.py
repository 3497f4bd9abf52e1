"""Fixtures of the fuzz suite: one valid artefact of each kind, made in well under a second, that the properties
corrupt. Nothing is trained: the checkpoint is an untrained lenet with class 3 masked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

FORGET = (3,)


@dataclass(frozen=True)
class Base:
    onnx: Path
    bundle: Path
    checkpoint: Path
    folder: Path


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Base:
    import onnx
    import onnxruntime as ort

    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.data import Normalization
    from edge_unlearn.deploy.bundle import write_bundle
    from edge_unlearn.models import build_model

    from ..deploy.tensorrt.conftest import FORGOTTEN, IMAGE, NUM_CLASSES, ours_fp32

    folder = tmp_path_factory.mktemp("fuzz-base")
    model = ours_fp32()
    onnx.save(model, str(folder / "model.onnx"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, *IMAGE)).astype(np.float32)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x})[0]
    labels = np.arange(40, dtype=np.int64) % NUM_CLASSES
    meta = {
        "source_sha256": "0" * 64,
        "dataset": "synthetic",
        "input_shape": list(IMAGE),
        "normalization": {"mean": [0.5], "std": [0.5]},
        "mask_value": -1e4,
        "provenance": {"dataset": "synthetic", "dataset_sha256": "", "split": "test", "checkpoint_sha256": "0" * 64},
    }
    arrays = {
        "inputs": x,
        "labels": labels,
        "reference_logits": logits,
        "class_names": np.array([f"c{i}" for i in range(NUM_CLASSES)]),
        "forgotten_classes": np.array(FORGOTTEN, np.int64),
        "indices": np.arange(len(x), dtype=np.int64),
    }
    with open(folder / "eval.npz", "wb") as handle:
        write_bundle(handle, arrays, meta)
    net = build_model("lenet", 10, (1, 8, 8))
    net.mask_classes(FORGET)
    ckpt_meta = CheckpointMeta(
        "lenet", 10, tuple(str(i) for i in range(10)), (1, 8, 8), Normalization((0.3,), (0.4,)), "digits"
    )
    save_checkpoint(folder / "ckpt.safetensors", net, ckpt_meta)
    return Base(folder / "model.onnx", folder / "eval.npz", folder / "ckpt.safetensors", folder)


def invoke_cli(args: list) -> tuple[int, str, str]:
    """Run the CLI in-process; an exception that escaped the command is a failed property."""
    from edge_unlearn.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"edge-unlearn {' '.join(map(str, args))} raised:\n{text}")
    return result.exit_code, result.stdout, result.stderr


def assert_clean_exit(code: int, stdout: str, stderr: str, before: set[str], folder: Path) -> None:
    """Exit code in {0, 1, 2}; no traceback; one stderr line for exit 2; no new file after a failure."""
    assert code in (0, 1, 2), (code, stdout[-500:], stderr[-500:])
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    if code == 2:
        after = {p.name for p in folder.iterdir()}
        assert after <= before, f"left behind: {sorted(after - before)}"
