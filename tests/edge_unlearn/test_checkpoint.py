from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from edge_unlearn.checkpoint import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from edge_unlearn.data import Normalization
from edge_unlearn.errors import CheckpointError, UsageError
from edge_unlearn.models import build_model


def _meta(num_classes=4):
    return CheckpointMeta(
        "lenet",
        num_classes,
        tuple("abcdefgh"[:num_classes]),
        (1, 8, 8),
        Normalization((0.5,), (0.25,)),
        "digits",
        train_recipe={"epochs": 3},
    )


def test_roundtrip_keeps_outputs_mask_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet", 4, (1, 8, 8)).eval()
    model.mask_classes([1])
    path = tmp_path / "m.safetensors"
    digest = save_checkpoint(path, model, _meta())
    loaded = load_checkpoint(path)
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(loaded.model.logits(x, masked=False), model.logits(x, masked=False))
    assert loaded.model.forgotten_classes == [1] and loaded.meta.forgotten_classes == (1,)
    assert loaded.sha256 == digest and read_meta(path).class_names == ("a", "b", "c", "d")
    assert loaded.meta.train_recipe == {"epochs": 3} and not loaded.model.training


def test_saving_is_byte_deterministic(tmp_path):
    model = build_model("lenet", 4, (1, 8, 8))
    digests = {save_checkpoint(tmp_path / f"m{i}.safetensors", model, _meta()) for i in range(6)}
    assert len(digests) == 1


def test_lineage_accumulates():
    meta = _meta().with_forgetting([2], {"method": "nhle"}, "abc")
    meta = meta.with_forgetting([0], {"method": "nhle"}, "def")
    assert meta.forgotten_classes == (0, 2) and [s["method"] for s in meta.lineage] == ["nhle", "nhle"]
    assert meta.parent_sha256 == "def"
    assert CheckpointMeta.from_json(json.loads(json.dumps(meta.to_json()))) == meta


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="not a valid safetensors checkpoint"):
        load_checkpoint(path)


def test_truncated_file(tmp_path):
    model = build_model("lenet", 4, (1, 8, 8))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, _meta())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an edge-unlearn checkpoint"):
        load_checkpoint(path)


def test_pickle_file_is_refused_without_running_it(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_tensors_of_another_arch(tmp_path):
    model = build_model("lenet", 4, (1, 8, 8))
    path = tmp_path / "m.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["head.weight"] = torch.zeros(3, 128)
    header = {"edge_unlearn": json.dumps({"format": "edge-unlearn/1", **_meta().to_json()})}
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="do not match arch lenet with 4 classes"):
        load_checkpoint(path)


def test_missing_file_and_unwritable_output(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(UsageError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "dir" / "m.safetensors", build_model("lenet", 4, (1, 8, 8)), _meta())


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path / "m.safetensors", build_model("lenet", 4, (1, 8, 8)), _meta())
    assert list(tmp_path.iterdir()) == []
