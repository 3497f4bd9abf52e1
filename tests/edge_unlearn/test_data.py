from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_unlearn.data import Normalization, load_dataset, load_image_folder, preprocess, resolve_classes, take_samples
from edge_unlearn.errors import DataError, UsageError
from tests.conftest import shared_npz


def test_digits_is_offline_uint8_nchw(digits):
    assert digits.x_train.dtype == torch.uint8 and digits.x_train.shape[1:] == (1, 8, 8)
    assert digits.num_classes == 10 and len(digits.x_train) + len(digits.x_test) == 1797
    assert set(digits.y_test.tolist()) == set(range(10))
    x = preprocess(digits.x_train, digits.normalization)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(20, 6, 5), dtype=np.uint8)
    arr = {"nhw": x, "nchw": x[:, None], "nhwc": x[..., None]}[layout]
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x_train=arr, y_train=y, x_test=arr[:8], y_test=y[:8])
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.input_shape == (1, 6, 5) and data.num_classes == 4
    assert torch.equal(data.x_train[:, 0], torch.from_numpy(x))


def test_npz_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "a.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="lacks arrays"):
        load_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.savez(tmp_path / "f.npz", x_train=np.zeros((2, 4, 4)), y_train=[0, 1], x_test=np.zeros((2, 4, 4)), y_test=[0, 1])
    with pytest.raises(DataError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_torchvision_dataset_missing_offline_names_folder_and_flag(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "--download" in str(info.value)


def test_unknown_dataset():
    with pytest.raises(UsageError, match="choose one of"):
        load_dataset("imagenet-1k")


def test_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (9, 7), dtype=np.uint8)).save(tmp_path / split / name / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.class_names == ("cat", "dog") and data.input_shape == (1, 9, 7)
    assert sorted(data.y_train.tolist()) == [0, 0, 0, 1, 1, 1]
    images, names, owners = load_image_folder(tmp_path / "test", channels=3, size=(4, 4))
    assert images.shape == (6, 3, 4, 4) and names == ["cat", "dog"] and owners == [0, 0, 0, 1, 1, 1]


def test_resolve_classes():
    names = ("zero", "one", "two")
    assert resolve_classes(["2", "zero"], names) == [0, 2]
    assert resolve_classes(["0,1"], names) == [0, 1]
    with pytest.raises(UsageError, match="out of range; the model has classes 0..2"):
        resolve_classes(["3"], names)
    with pytest.raises(UsageError, match="unknown class 'three'"):
        resolve_classes(["three"], names)


def test_take_samples(digits):
    x, y = take_samples(digits, [3, 5], 4, seed=1)
    assert x.shape == (8, 1, 8, 8) and y.tolist() == [3] * 4 + [5] * 4
    x2, _ = take_samples(digits, [3, 5], 4, seed=1)
    assert torch.equal(x, x2)
    with pytest.raises(UsageError, match="fewer than --samples 100000"):
        take_samples(digits, [3], 100000)


def test_normalization_json_roundtrip():
    norm = Normalization((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    assert Normalization.from_json(norm.to_json()) == norm


def test_shared_mnist_loads():
    data = load_dataset(shared_npz("mnist"))
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and len(data.x_test) == 10000
