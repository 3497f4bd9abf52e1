"""The torch-free core: the one checkpoint header reader, the one accuracy and retain drop, strict JSON text."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pytest

from edge_unlearn.core.figures import accuracy, retain_drop
from edge_unlearn.core.formats import CHECKPOINT_FORMAT, PRECISIONS, read_checkpoint_header, read_safetensors_metadata
from edge_unlearn.core.jsontext import to_json_text
from edge_unlearn.errors import CheckpointError, UsageError


def _safetensors(path, metadata: dict | None, tensors: bytes = b"") -> None:
    header = {"__metadata__": metadata} if metadata is not None else {}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tensors)


def test_header_reader_matches_what_save_checkpoint_writes(digits_checkpoint):
    """The reader sees exactly the metadata the host side wrote (and torch's own loader agrees)."""
    from edge_unlearn.checkpoint import read_meta

    header = read_checkpoint_header(digits_checkpoint)
    assert header["format"] == CHECKPOINT_FORMAT
    meta = read_meta(digits_checkpoint)
    assert header["arch"] == meta.arch == "lenet" and header["num_classes"] == meta.num_classes == 10
    assert tuple(header["input_shape"]) == meta.input_shape


def test_header_reader_rejects_foreign_and_broken_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    _safetensors(foreign, {"other": "1"})
    with pytest.raises(CheckpointError, match="not an edge-unlearn checkpoint"):
        read_checkpoint_header(foreign)
    assert read_safetensors_metadata(foreign) == {"other": "1"}
    newer = tmp_path / "newer.safetensors"
    _safetensors(newer, {"edge_unlearn": json.dumps({"format": "edge-unlearn/99"})})
    with pytest.raises(CheckpointError, match="edge-unlearn/1"):
        read_checkpoint_header(newer)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match="ends inside its header"):
        read_checkpoint_header(truncated)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40))
    with pytest.raises(CheckpointError, match="exceeds"):
        read_checkpoint_header(huge)
    garbage = tmp_path / "garbage.safetensors"
    _safetensors(garbage, {"edge_unlearn": "{not json"})
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint_header(garbage)
    with pytest.raises(UsageError, match="not found"):
        read_checkpoint_header(tmp_path / "absent.safetensors")


def test_accuracy_over_classes_and_empty_selection():
    pred, labels = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 1])
    assert accuracy(pred, labels) == pytest.approx(4 / 6)
    assert accuracy(pred, labels, [2]) == pytest.approx(2 / 3)
    assert accuracy(pred, labels, [0, 1]) == pytest.approx(2 / 3)
    assert accuracy(pred, labels, [7]) is None  # no sample: not measurable, never 0 or 1
    assert accuracy([], []) is None
    with pytest.raises(ValueError, match="shape"):
        accuracy(pred, labels[:3])


def test_retain_drop_is_reference_minus_model():
    assert retain_drop(0.95, 0.93) == pytest.approx(0.02)
    assert retain_drop(0.90, 0.92) == pytest.approx(-0.02)  # negative = better than the reference
    assert retain_drop(None, 0.9) is None and retain_drop(0.9, None) is None


def test_json_text_is_strict():
    text = to_json_text({"a": float("nan"), "b": [1.5, float("inf")], "c": (1, -math.inf)})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict constant {name}")) == {
        "a": None,
        "b": [1.5, None],
        "c": [1, None],
    }


def test_one_precisions_tuple_everywhere():
    from edge_unlearn.deploy import onnx_hazards, onnx_meta, tensorrt

    assert onnx_meta.PRECISIONS is PRECISIONS and onnx_hazards.PRECISIONS is PRECISIONS
    assert tensorrt.PRECISIONS is PRECISIONS


# -- the one preprocessing record -------------------------------------------------------------------------------

RECORD_SIDES = ["host", "device"]


def _record_class(side: str):
    if side == "host":
        from edge_unlearn.data import Preprocessing

        return Preprocessing, UsageError
    from edge_unlearn.deploy.preprocessing import ImagePreprocessing
    from edge_unlearn.errors import ModelFileError

    return ImagePreprocessing, ModelFileError


@pytest.mark.parametrize("side", RECORD_SIDES)
@pytest.mark.parametrize(
    "record",
    [
        {
            "version": 1,
            "channels": 3,
            "resize": 256,
            "crop": [224, 224],
            "interpolation": "bicubic",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        {
            "version": 1,
            "channels": 1,
            "resize": [40, 36],
            "crop": [32, 30],
            "interpolation": "nearest",
            "mean": [0.5],
            "std": [0.25],
        },
        {
            "version": 1,
            "channels": 1,
            "resize": None,
            "crop": [8, 8],
            "interpolation": "bilinear",
            "mean": [0.3],
            "std": [0.4],
        },
    ],
)
def test_both_sides_read_and_write_the_same_record(side, record):
    """One JSON record, read by the host (torchvision) and the device (numpy) into the same fields and back."""
    from edge_unlearn.core.preprocessing import PreprocessingRecord

    cls, _ = _record_class(side)
    parsed = cls.from_json(record)
    assert isinstance(parsed, PreprocessingRecord)
    assert parsed.to_json() == record
    assert parsed.input_shape == (record["channels"], *record["crop"])
    assert parsed.changes_geometry == (record["resize"] is not None)
    assert PreprocessingRecord.from_json(record).to_json() == record


@pytest.mark.parametrize("side", RECORD_SIDES)
@pytest.mark.parametrize(
    "change, words",
    [
        ({"channels": 2}, "1 or 3 channels"),
        ({"mean": [0.5, 0.5]}, "one per channel"),
        ({"std": [0.0, 0.2, 0.2]}, "--std positive"),
        ({"mean": [float("nan"), 0.5, 0.5]}, "finite"),
        ({"crop": [0, 32]}, "input size"),
        ({"crop": [32]}, "input size"),
        ({"resize": 1 << 20}, "resize"),
        ({"resize": [32, 32, 3]}, "resize"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"version": 2}, "upgrade edge-unlearn"),
    ],
)
def test_a_bad_record_is_refused_with_each_sides_error(side, change, words):
    """The checks are the core's, the error type each side's: a user's flag on the host, a damaged file on the device."""
    cls, error = _record_class(side)
    good = {
        "version": 1,
        "channels": 3,
        "resize": None,
        "crop": [32, 32],
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.2, 0.2],
    }
    cls.from_json(good)
    with pytest.raises(error, match=re.escape(words)) as info:
        cls.from_json({**good, **change})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("side", RECORD_SIDES)
@pytest.mark.parametrize(
    "damaged",
    [
        {"channels": 3},
        {"channels": "three", "crop": [32, 32], "mean": [0], "std": [1]},
        {"channels": 1, "crop": 32, "mean": [0], "std": [1]},
        None,
    ],
)
def test_an_unreadable_record_is_one_line_of_each_sides_error(side, damaged):
    cls, error = _record_class(side)
    with pytest.raises(error, match="preprocessing record is damaged"):
        cls.from_json(damaged)
