"""Issue #13's list of bad inputs: each is one line on stderr with exit 2 (no traceback), checked before any work,
and leaves no file behind. In-process (CliRunner) so the suite stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_cli, one_line_error


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--batch-size", "0"], "'--batch-size'"),
        (["--lr", "-1"], "'--lr'"),
        (["--lr", "nan"], "'--lr'"),
        (["--lr", "inf"], "'--lr'"),
        (["--device", "tpu"], "'--device'"),
        (["--epochs", "-3"], "'--epochs'"),
    ],
)
def test_train_options_are_range_checked_before_training(tmp_path, args, needle):
    out = tmp_path / "t.safetensors"
    one_line_error(invoke_cli(["train", "-o", out, *args]), needle)
    assert not out.exists()


def test_train_output_folder_is_checked_before_training(tmp_path):
    one_line_error(invoke_cli(["train", "-o", tmp_path / "nodir" / "t.safetensors"]), "does not exist")


@pytest.mark.parametrize(
    "param, needle",
    [
        ("steps=abc", "--set steps must be an integer"),
        ("steps=1.5", "--set steps must be an integer"),
        ("lr=NaN", "--set lr must be a finite number"),
        ("lr=1e309", "--set lr must be a finite number"),
        ("steps=0", "--set steps must be greater than 0"),
        ("lr=-0.1", "--set lr must be greater than 0"),
        ("data_free=maybe", "data_free must be one of batchnorm, none"),
    ],
)
def test_method_parameters_are_type_and_range_checked(digits_checkpoint, tmp_path, param, needle):
    out = tmp_path / "f.safetensors"
    result = invoke_cli(["forget", digits_checkpoint, "--forget", "3", "--set", param, "--no-eval", "-o", out])
    one_line_error(result, needle)
    assert not out.exists()


def test_forget_refuses_to_overwrite_its_input(digits_checkpoint, tmp_path):
    before = Path(digits_checkpoint).read_bytes()
    one_line_error(invoke_cli(["forget", digits_checkpoint, "--forget", "3", "-o", digits_checkpoint]), "also an input")
    assert Path(digits_checkpoint).read_bytes() == before


def _nan_checkpoint(src: Path, dst: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as handle:
        header = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    name = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(dst), metadata=header)
    return dst


def test_nan_checkpoint_is_refused_on_load(digits_checkpoint, tmp_path):
    bad = _nan_checkpoint(Path(digits_checkpoint), tmp_path / "nan.safetensors")
    out = tmp_path / "f.safetensors"
    one_line_error(invoke_cli(["forget", bad, "--forget", "3", "--no-eval", "-o", out]), "NaN/Inf")
    assert not out.exists()
    one_line_error(invoke_cli(["export", bad, "-o", tmp_path / "m.onnx"]), "NaN/Inf")
    assert not (tmp_path / "m.onnx").exists()


def test_nan_weights_are_never_written(digits_checkpoint, tmp_path):
    import torch

    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
    from edge_unlearn.errors import CheckpointError

    ckpt = load_checkpoint(digits_checkpoint)
    with torch.no_grad():
        ckpt.model.head.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="refusing to write"):
        save_checkpoint(tmp_path / "inf.safetensors", ckpt.model, ckpt.meta)
    assert list(tmp_path.iterdir()) == []


def test_absurd_input_shape_header_is_refused(digits_checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(digits_checkpoint), framework="pt") as handle:
        header = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    data = json.loads(header["edge_unlearn"])
    data["input_shape"] = [1, 100000, 100000]
    save_file(tensors, str(tmp_path / "big.safetensors"), metadata={"edge_unlearn": json.dumps(data)})
    one_line_error(invoke_cli(["export", tmp_path / "big.safetensors", "-o", tmp_path / "m.onnx"]), "input shape")


def test_opset_out_of_range(digits_checkpoint, tmp_path):
    one_line_error(invoke_cli(["export", digits_checkpoint, "-o", tmp_path / "m.onnx", "--opset", "99"]), "--opset")
    assert not (tmp_path / "m.onnx").exists()


def test_json_folder_is_checked_before_export(digits_checkpoint, tmp_path):
    result = invoke_cli(
        ["export", digits_checkpoint, "-o", tmp_path / "m.onnx", "--json-out", tmp_path / "nodir" / "x.json"]
    )
    one_line_error(result, "does not exist")
    assert not (tmp_path / "m.onnx").exists()  # refused before the artefact was written


def test_unwritable_run_dir_is_checked_before_export(digits_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke_cli(["export", digits_checkpoint, "-o", tmp_path / "m.onnx", "--run-dir", blocker / "run"])
    one_line_error(result, "--run-dir")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("batch", ["100000000", "0", "abc"])
def test_bench_batch_is_range_checked(tmp_path, batch):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"unused: refused before it is read")
    one_line_error(invoke_cli(["bench", model, "--batches", batch]), "--batches")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04broken", b"\x93NUMPY garbage"])
def test_empty_or_corrupt_npz_is_exit_2_not_aborted(tmp_path, content):
    """np.load of a 0-byte file raises EOFError, which click turns into 'Aborted!' with exit 1."""
    from edge_unlearn.deploy.bundle import load_bundle
    from edge_unlearn.errors import ModelFileError

    npz = tmp_path / "data.npz"
    npz.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a readable .npz bundle"):
        load_bundle(npz)
    one_line_error(
        invoke_cli(["train", "--dataset", f"npz:{npz}", "-o", tmp_path / "t.safetensors"]), "not a readable .npz"
    )
    assert not (tmp_path / "t.safetensors").exists()


def test_empty_test_split_bundle_is_refused(tmp_path):
    from edge_unlearn.deploy.bundle import FORMAT, load_bundle
    from edge_unlearn.errors import ModelFileError

    bundle = tmp_path / "empty.npz"
    np.savez(
        bundle,
        inputs=np.zeros((0, 1, 8, 8), np.float32),
        labels=np.zeros(0, np.int64),
        reference_logits=np.zeros((0, 10), np.float32),
        class_names=np.array([str(i) for i in range(10)]),
        forgotten_classes=np.array([3]),
        meta_json=np.asarray(json.dumps({"format": FORMAT})),
    )
    with pytest.raises(ModelFileError, match="holds no samples"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    "args, needle",
    [(["--forget", "99"], "'--forget'"), (["--forget", "cat"], "'--forget'")],
)
def test_demo_checks_its_options_before_training(tmp_path, args, needle):
    out = tmp_path / "demo"
    one_line_error(invoke_cli(["demo", "--out-dir", out, *args]), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "case, needle",
    [
        ("float_labels", "fractional labels"),
        ("labels_5_to_14", "have no training images"),
        ("empty_test", "test split is empty"),
        ("negative", "negative labels"),
    ],
)
def test_bad_dataset_labels_are_refused_before_training(tmp_path, case, needle):
    x = np.zeros((20, 8, 8), np.uint8)
    y = np.arange(20) % 10
    y_test, x_test = y[:10], x[:10]
    if case == "float_labels":
        y = y + 0.5
    elif case == "labels_5_to_14":
        y = y + 5
    elif case == "empty_test":
        x_test, y_test = x[:0], y[:0]
    else:
        y = y - 1
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    out = tmp_path / "t.safetensors"
    one_line_error(invoke_cli(["train", "--dataset", f"npz:{tmp_path / 'd.npz'}", "-o", out]), needle)
    assert not out.exists()


@pytest.mark.parametrize("field, value", [("class_names", ["a", "b"]), ("forgotten_classes", [12]), ("num_classes", 0)])
def test_inconsistent_checkpoint_header_is_refused(digits_checkpoint, tmp_path, field, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(digits_checkpoint), framework="pt") as handle:
        header = json.loads(handle.metadata()["edge_unlearn"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    header[field] = value
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"edge_unlearn": json.dumps(header)})
    result = invoke_cli(["export", bad, "-o", tmp_path / "m.onnx"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "m.onnx").exists()


def _digit_pngs(folder, count: int = 3) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(((i * 40) % 255) * __import__("numpy").ones((8, 8), dtype="uint8")).save(folder / f"{i}.png")


def test_forget_samples_subfolder_matching_no_class_is_refused(digits_checkpoint, tmp_path):
    """Was: every image of an unknown subfolder silently labelled as the first forgotten class."""
    _digit_pngs(tmp_path / "samples" / "cats")
    out = tmp_path / "f.safetensors"
    result = invoke_cli(
        ["forget", digits_checkpoint, "--forget", "3", "--forget-images", tmp_path / "samples", "--no-eval", "-o", out]
    )
    one_line_error(result, "'cats'", "matches no class")
    assert not out.exists()


def test_forget_samples_loose_images_need_subfolders_when_several_classes_are_forgotten(digits_checkpoint, tmp_path):
    _digit_pngs(tmp_path / "samples")
    out = tmp_path / "f.safetensors"
    result = invoke_cli(
        [
            "forget",
            digits_checkpoint,
            "--forget",
            "3",
            "--forget",
            "5",
            "--forget-images",
            tmp_path / "samples",
            "--no-eval",
            "-o",
            out,
        ]
    )
    one_line_error(result, "subfolder named after the class")
    assert not out.exists()


def test_evaluate_with_every_class_forgotten_is_refused(digits_checkpoint):
    """Was: nan figures and exit 0."""
    args = ["evaluate", digits_checkpoint, "--no-probe"]
    for c in range(10):
        args += ["--forget", str(c)]
    one_line_error(invoke_cli(args), "no retained class")


def test_quantize_calibration_set_of_another_class_count_is_refused(tmp_path):
    """Was: a calibration set of another dataset with fewer classes than the model passed silently."""
    import numpy as np

    from edge_unlearn.deploy.onnx_meta import OnnxMeta
    from edge_unlearn.errors import UsageError
    from edge_unlearn.export.quantize import calibration_inputs

    rng = np.random.default_rng(0)
    npz = tmp_path / "five.npz"
    np.savez(
        npz,
        x_train=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8),
        y_train=np.arange(20) % 5,
        x_test=rng.integers(0, 255, (10, 8, 8), dtype=np.uint8),
        y_test=np.arange(10) % 5,
    )
    meta = OnnxMeta.__new__(OnnxMeta)
    object.__setattr__(meta, "num_classes", 10)
    object.__setattr__(meta, "input_shape", (1, 8, 8))
    object.__setattr__(meta, "class_names", tuple("abcdefghij"))  # another dataset: its names are not a prefix
    object.__setattr__(meta, "preprocessing", {})  # an export without a preprocessing record
    with pytest.raises(UsageError, match="has 5 classes but the model has 10"):
        calibration_inputs(f"npz:{npz}", meta, samples=8)
