"""Issue 30's robustness findings, each as the user meets it: an absurd label, an ONNX that does not load handed to
`build-engine --check-only`, an unlisted ``.*.tmp`` file in a signed run folder, a bundle of NaN or 1e300 values,
and a checkpoint whose head weights are integers. Each is refused in one line with exit 2 (or, for the run folder,
fails `verify`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from edge_unlearn.errors import CheckpointError
from tests.conftest import invoke_cli, one_line_error


def _npz_dataset(path: Path, label: int | float) -> str:
    rng = np.random.default_rng(0)
    y_train = np.arange(40) % 4
    y_train = y_train.astype(type(label) if isinstance(label, float) else np.int64)
    y_train[0] = label
    np.savez(
        path,
        x_train=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
        y_train=y_train,
        x_test=rng.integers(0, 255, (8, 8, 8), dtype=np.uint8),
        y_test=np.arange(8) % 4,
    )
    return f"npz:{path}"


@pytest.mark.parametrize("label, shown", [(10**9, "1000000000"), (1e30, "1e+30"), (100_000, "100000")])
def test_absurd_label_is_refused_before_allocation(tmp_path, label, shown):
    """One label of 10**9 made `train` allocate 23.6 GB until the kernel killed it."""
    spec = _npz_dataset(tmp_path / "d.npz", label)
    out = tmp_path / "m.safetensors"
    one_line_error(invoke_cli(["train", "--dataset", spec, "-o", out]), f"label {shown}", "at most 100,000 classes")
    assert not out.exists()


def test_largest_allowed_label_passes_the_guard():
    from edge_unlearn.guards import MAX_CLASSES, check_class_count

    check_class_count("x", np.array([0, MAX_CLASSES - 1]), np.array([0]))


def _custom_domain_op(source: Path, path: Path) -> Path:
    """A graph the ONNX checker accepts (it skips unknown domains) and onnxruntime cannot load."""
    model = onnx.load(str(source))
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, str(path))
    return path


def test_check_only_refuses_an_empty_onnx(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    one_line_error(invoke_cli(["build-engine", empty, "--check-only"]), "empty (0 bytes)")


def test_check_only_refuses_an_onnx_onnxruntime_cannot_load(artifacts, tmp_path):
    model = _custom_domain_op(artifacts.fp32, tmp_path / "custom.onnx")
    one_line_error(invoke_cli(["build-engine", model, "--check-only"]), "onnxruntime cannot load", "com.example")


def test_check_only_refuses_an_unreleased_opset(artifacts, tmp_path):
    model = onnx.load(str(artifacts.fp32))
    model.opset_import[0].version = 999
    path = tmp_path / "opset.onnx"
    onnx.save(model, str(path))
    one_line_error(invoke_cli(["build-engine", path, "--check-only"]), "opset 999")


def test_preflight_accepts_our_exports(artifacts):
    from edge_unlearn.deploy.tensorrt.preflight import check_onnx_loads

    for path in (artifacts.fp32, artifacts.int8, artifacts.fp16):
        check_onnx_loads(path)


def test_verify_key_fails_on_an_unlisted_tmp_file(tmp_path):
    from edge_unlearn.deploy.rundir import keygen, record, sign, verify, write_manifest

    run = tmp_path / "run"
    record(run, "note", {"verdict": "pass"})
    write_manifest(run)
    private, public = keygen(tmp_path / "key.pem")
    sign(run, private)
    assert verify(run, public_key=public)
    (run / ".validate-forged.json.tmp").write_text('{"verdict": "pass"}')
    result = verify(run, public_key=public)
    assert not result and ".validate-forged.json.tmp" in result.unlisted


@pytest.mark.parametrize(
    "array, value",
    [
        ("inputs", np.nan),
        ("inputs", 1e300),
        ("inputs", np.inf),
        ("reference_logits", np.nan),
        ("reference_logits", 1e300),
    ],
)
def test_bundle_with_absurd_values_is_bad_input(artifacts, tmp_path, array, value):
    """They were exit 1 (a failed validation) although the bundle, not the model, is broken."""
    with np.load(artifacts.bundle, allow_pickle=False) as loaded:
        data = {key: loaded[key] for key in loaded.files}
    data[array] = data[array].astype(np.float64)
    data[array].flat[0] = value
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    one_line_error(invoke_cli(["validate", artifacts.fp32, "--bundle", bad]), array, "NaN, Inf or values beyond")


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_head_weights_are_refused(digits_checkpoint, tmp_path, dtype):
    """``load_state_dict`` would have cast them to float32 silently."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from edge_unlearn.checkpoint import load_checkpoint

    tensors = load_file(str(digits_checkpoint))
    with safe_open(str(digits_checkpoint), framework="np") as handle:
        metadata = handle.metadata()
    head = next(name for name in tensors if "head" in name and name.endswith("weight"))
    tensors[head] = np.round(tensors[head] * 100).astype(dtype)
    bad = tmp_path / "int_head.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(
        CheckpointError, match=f"tensor '{head}' is {np.dtype(dtype).name} where the model holds float32"
    ):
        load_checkpoint(bad)


def test_fp16_head_weights_widen_exactly(digits_checkpoint, tmp_path):
    """The intended cast: a floating tensor of another width loads into the float32 model, exactly for FP16."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from edge_unlearn.checkpoint import load_checkpoint

    tensors = load_file(str(digits_checkpoint))
    with safe_open(str(digits_checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
    head = next(name for name in tensors if "head" in name and name.endswith("weight"))
    tensors[head] = tensors[head].half()
    half = tmp_path / "half_head.safetensors"
    save_file(tensors, str(half), metadata=metadata)
    loaded = load_checkpoint(half).model.state_dict()[head]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, tensors[head].float())
