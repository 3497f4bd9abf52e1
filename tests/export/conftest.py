"""Session fixtures for the deployment tests: one lenet trained on scikit-learn's digits, class 3 masked,
exported, quantized and bundled once (the expensive part), shared by every test in this folder."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

FORGET = (3,)


@dataclass(frozen=True)
class Artifacts:
    checkpoint: Path
    fp32: Path
    int8: Path
    fp16: Path
    bundle: Path
    folder: Path


@pytest.fixture(scope="session")
def digits():
    from edge_unlearn.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained(digits):
    """lenet, at least 40 epochs (400 steps) on digits, class 3 masked by class weight masking."""
    import torch

    from edge_unlearn.checkpoint import CheckpointMeta
    from edge_unlearn.training import TrainConfig, train_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on 2 busy shared cores run 5x slower than 1
    try:
        model = train_model("lenet", digits, TrainConfig(epochs=40, device="cpu"), progress=False).model
    finally:
        torch.set_num_threads(threads)
    model.mask_classes(FORGET)
    meta = CheckpointMeta(
        arch="lenet",
        num_classes=digits.num_classes,
        class_names=digits.class_names,
        input_shape=digits.input_shape,
        normalization=digits.normalization,
        dataset="digits",
    )
    return model, meta


@pytest.fixture(scope="session")
def artifacts(trained, tmp_path_factory) -> Artifacts:
    from edge_unlearn.checkpoint import save_checkpoint
    from edge_unlearn.export.bundle import make_bundle
    from edge_unlearn.export.onnx_export import export_onnx
    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    folder = tmp_path_factory.mktemp("deploy")
    model, meta = trained
    ckpt = folder / "forgotten.safetensors"
    save_checkpoint(ckpt, model, meta)
    with contextlib.redirect_stdout(io.StringIO()):
        export_onnx(ckpt, folder / "model.onnx")
        quantize_model(
            folder / "model.onnx", folder / "model.int8.onnx", QuantizeConfig(precision="int8"), calib="digits"
        )
        quantize_model(folder / "model.onnx", folder / "model.fp16.onnx", QuantizeConfig(precision="fp16"))
    make_bundle(ckpt, "digits", folder / "eval.npz")
    return Artifacts(
        ckpt, folder / "model.onnx", folder / "model.int8.onnx", folder / "model.fp16.onnx", folder / "eval.npz", folder
    )
