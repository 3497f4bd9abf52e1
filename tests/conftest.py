"""Shared fixtures: a small lenet trained on scikit-learn's digits, and paths to the shared real data."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_npz(name: str) -> str:
    """Dataset spec of a shared real-data archive; skips the test when the folder is absent."""
    path = SHARED_DATA / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data beside the checkout)")
    return f"npz:{path}"


@pytest.fixture(scope="session")
def digits():
    from edge_unlearn.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory, digits) -> Path:
    """A lenet trained on digits (about 3 s on 2 cores), saved as a checkpoint."""
    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.training import TrainConfig, train_model

    torch.set_num_threads(2)
    recipe = TrainConfig(epochs=1, min_steps=150, seed=0)
    result = train_model("lenet", digits, recipe, progress=False)
    meta = CheckpointMeta(
        "lenet",
        digits.num_classes,
        digits.class_names,
        digits.input_shape,
        digits.normalization,
        "digits",
        train_recipe=recipe.to_json(),
    )
    path = tmp_path_factory.mktemp("ckpt") / "original.safetensors"
    save_checkpoint(path, result.model, meta)
    return path


def invoke_cli(args: list) -> object:
    """Run ``edge-unlearn ARGS`` in-process; an uncaught exception (a traceback for the user) fails the test."""
    from click.testing import CliRunner

    from edge_unlearn.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: uncaught {type(result.exception).__name__}: {result.exception}")
    return result


def one_line_error(result, *needles: str) -> str:
    """Exit 2 with exactly one ``error: ...`` line on stderr that names every needle; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def one_thread():
    """One intra-op thread for the block, restored afterwards: bit-for-bit comparisons need one reduction order,
    and tiny models train many times faster on one thread on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def forget_set(data, classes, n: int):
    """``n`` training samples of each of ``classes`` (seed 0), preprocessed: what `forget` receives."""
    from edge_unlearn.data import preprocess, take_samples
    from edge_unlearn.unlearn import ForgetSet

    x, y = take_samples(data, classes, n, seed=0)
    return ForgetSet(preprocess(x, data.normalization), y, tuple(classes))


# Deployment fixtures: one lenet trained on digits, class 3 masked, exported, quantized and bundled once per
# session (the expensive part), shared by tests/export and tests/deploy.
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
