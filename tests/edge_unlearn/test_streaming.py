"""Lazy datasets (issue #12): image folders of any size and mode, decoded per batch through the checkpoint's
preprocessing, DataLoader workers, memory-mapped npz, and the split() seam training reads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import edge_unlearn.data as data_module
import edge_unlearn.data.preprocessing as preprocessing_module
import edge_unlearn.data.sources as sources_module
from edge_unlearn.data import ArrayImages, FolderImages, Normalization, Preprocessing, load_dataset, load_image_folder
from edge_unlearn.errors import DataError
from tests.conftest import invoke_cli, one_line_error


def _digit_folder(root, digits, per_class: int = 4, classes=range(10), seed: int = 0) -> dict:
    """An ImageFolder of digits images at random sizes and modes (grey, RGB, RGBA, palette; PNG, JPEG, WebP)."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, images, labels in (("train", digits.x_train, digits.y_train), ("test", digits.x_test, digits.y_test)):
        for c in classes:
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for k, i in enumerate(torch.nonzero(labels == c).flatten()[:per_class].tolist()):
                image = Image.fromarray(images[i][0].numpy()).resize(
                    (int(rng.integers(6, 40)), int(rng.integers(6, 30))), Image.BILINEAR
                )
                mode, suffix = [("L", "png"), ("RGB", "jpg"), ("RGBA", "png"), ("P", "png"), ("RGB", "webp")][k % 5]
                image = image.convert(mode)
                path = folder / f"{k}.{suffix}"
                image.save(path)
                written[path] = image
    return written


@pytest.fixture()
def decodes(monkeypatch):
    """Counts image decodes."""
    count = {"n": 0}
    real = sources_module.decode_image

    def counting(path):
        count["n"] += 1
        return real(path)

    monkeypatch.setattr(sources_module, "decode_image", counting)
    return count


PREP = Preprocessing(1, (8, 8), (0.3,), (0.4,), resize=8)


def test_folder_dataset_decodes_nothing_until_read(tmp_path, digits, decodes):
    _digit_folder(tmp_path, digits)
    data = load_dataset(f"folder:{tmp_path}", preprocessing=PREP)
    assert decodes["n"] == 0 and isinstance(data.x_train, FolderImages)
    assert data.input_shape == (1, 8, 8) and len(data.x_test) == 40 and data.normalization == PREP.normalization
    batch = data.x_test[torch.tensor([5, 1])]
    assert batch.shape == (2, 1, 8, 8) and batch.dtype == torch.uint8 and decodes["n"] == 2
    assert torch.equal(batch[1], data.x_test[1]) and decodes["n"] == 3
    sub = data.split("train", classes=[2])
    assert decodes["n"] == 3 and len(sub) == 4 and set(sub.labels.tolist()) == {2}


def test_normalization_of_a_folder_reads_a_bounded_sample(tmp_path, digits, decodes, monkeypatch):
    _digit_folder(tmp_path, digits)
    monkeypatch.setattr(preprocessing_module, "NORMALIZATION_SAMPLE", 7)
    data = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert decodes["n"] == 7
    # the same as the statistics of those 7 images, read directly
    picks = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:7].sort().values
    expected = Normalization.of(data.x_train[picks])
    assert np.allclose(data.normalization.mean, expected.mean) and np.allclose(data.normalization.std, expected.std)


def test_mixed_sizes_and_modes_decode_like_preprocessing_geometry(tmp_path, digits):
    written = _digit_folder(tmp_path, digits, per_class=5, classes=[0])
    for channels in (1, 3):
        prep = Preprocessing(channels, (8, 8), (0.5,) * channels, (0.5,) * channels, resize=9)
        data = load_dataset(f"folder:{tmp_path}", preprocessing=prep)
        for i in range(len(data.x_train)):
            path = data.x_train.path(i)
            image = Image.open(path)  # what is on disk (JPEG/WebP are lossy)
            assert image.mode == written[path].mode or path.suffix != ".png"
            array = np.array(image.convert("L" if image.mode == "L" else "RGB"))  # RGBA: alpha dropped
            raw = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())
            assert torch.equal(data.x_train[i], prep.geometry(raw[None])[0]), (path, channels)


def test_split_is_lazy_and_keeps_its_semantics(tmp_path, digits, decodes):
    items = digits.split("train", classes=[3, 5])
    keep = torch.isin(digits.y_train, torch.tensor([3, 5]))
    assert len(items) == int(keep.sum())
    image, label = items[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8)
    assert torch.equal(image, digits.x_train[keep][0]) and int(label) == int(digits.y_train[keep][0])
    loader = torch.utils.data.DataLoader(items, batch_size=16)
    xb, yb = next(iter(loader))
    assert xb.shape == (16, 1, 8, 8) and set(yb.tolist()) <= {3, 5}
    with pytest.raises(ValueError, match="'train' or 'test'"):
        digits.split("val")
    _digit_folder(tmp_path, digits)
    folder = load_dataset(f"folder:{tmp_path}", preprocessing=PREP)
    test_items = folder.split("test", classes=[7])
    assert decodes["n"] == 0 and len(test_items) == 4
    image, label = test_items[2]
    assert decodes["n"] == 1 and image.shape == (1, 8, 8) and int(label) == 7


def test_workers_give_the_same_batches_and_figures(tmp_path, digits, digits_checkpoint):
    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.metrics import evaluate_model

    _digit_folder(tmp_path, digits, per_class=12)
    ck = load_checkpoint(digits_checkpoint)
    prep = dataclasses.replace(PREP, mean=ck.meta.normalization.mean, std=ck.meta.normalization.std)
    data = load_dataset(f"folder:{tmp_path}", preprocessing=prep)
    serial = torch.cat(list(data.x_test.batches(batch_size=7, workers=0)))
    parallel = torch.cat(list(data.x_test.batches(batch_size=7, workers=2)))
    assert serial.shape == (120, 1, 8, 8) and torch.equal(serial, parallel)
    one = evaluate_model(ck.model, data, [3], seed=0)
    two = evaluate_model(ck.model, data.with_workers(2), [3], seed=0)
    assert one.to_json() == two.to_json() and one.accuracy > 0.3


def test_a_broken_image_in_a_worker_is_one_data_error_naming_it(tmp_path, digits):
    _digit_folder(tmp_path, digits)
    bad = tmp_path / "test" / "4" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    data = load_dataset(f"folder:{tmp_path}", preprocessing=PREP)
    for workers in (0, 2):
        with pytest.raises(DataError) as info:
            list(data.x_test.batches(batch_size=5, workers=workers))
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_npz_saved_uncompressed_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (30, 7, 5, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "plain.npz", x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    np.savez_compressed(tmp_path / "packed.npz", x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    plain, packed = load_dataset(f"npz:{tmp_path / 'plain.npz'}"), load_dataset(f"npz:{tmp_path / 'packed.npz'}")
    assert isinstance(plain.x_train, ArrayImages) and isinstance(plain.x_train.array, np.memmap)
    assert not isinstance(packed.x_train.array, np.memmap)
    expected = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    assert torch.equal(plain.x_train[:], expected) and torch.equal(packed.x_train[[4, 2]], expected[[4, 2]])
    assert plain.normalization == packed.normalization and plain.input_shape == (3, 7, 5)


def test_prepared_arrays_resize_per_batch(digits):
    prep = Preprocessing(3, (12, 12), (0.5,) * 3, (0.5,) * 3, resize=12)
    data = data_module.prepare_dataset(digits, prep)
    assert data.input_shape == (3, 12, 12) and len(data.x_train) == len(digits.x_train)
    assert torch.equal(data.x_test[:5], prep.geometry(digits.x_test[:5]))


def test_mixed_folder_without_image_size_is_one_line_exit_2(tmp_path, digits):
    _digit_folder(tmp_path, digits, per_class=2)
    result = invoke_cli(
        [
            "train",
            "--dataset",
            f"folder:{tmp_path}",
            "--epochs",
            "1",
            "--min-steps",
            "1",
            "-o",
            tmp_path / "m.safetensors",
        ]
    )
    one_line_error(result, "--image-size")
    assert not (tmp_path / "m.safetensors").exists()


def test_unreadable_image_and_bad_workers_are_one_line_exit_2(tmp_path, digits, digits_checkpoint):
    _digit_folder(tmp_path, digits, per_class=2)
    bad = tmp_path / "train" / "1" / "zz.png"
    bad.write_bytes(b"\x89PNG broken")
    result = invoke_cli(
        [
            "train",
            "--dataset",
            f"folder:{tmp_path}",
            "--image-size",
            "8",
            "--epochs",
            "1",
            "--min-steps",
            "1",
            "--workers",
            "2",
            "-o",
            tmp_path / "m.safetensors",
        ]
    )
    one_line_error(result, str(bad))
    result = invoke_cli(["evaluate", str(digits_checkpoint), "--workers", "-1"])
    assert result.exit_code == 2 and "--workers" in result.output


def test_forget_samples_get_the_checkpoints_full_preprocessing(tmp_path, digits, digits_checkpoint):
    """The #11 bug: --forget-images ignored the checkpoint's resize/crop."""
    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
    from edge_unlearn.workflows import ForgetRequest, _forget_set

    ck = load_checkpoint(digits_checkpoint)
    prep = Preprocessing(1, (8, 8), ck.meta.normalization.mean, ck.meta.normalization.std, resize=11)
    imported = tmp_path / "imported.safetensors"
    save_checkpoint(imported, ck.model, dataclasses.replace(ck.meta, preprocessing=prep))
    folder = tmp_path / "threes"
    folder.mkdir()
    raws = []
    for k, i in enumerate(torch.nonzero(digits.y_train == 3).flatten()[:4].tolist()):
        image = Image.fromarray(digits.x_train[i][0].numpy()).resize((20 + 3 * k, 14), Image.NEAREST)
        image.save(folder / f"{k}.png")
        raws.append(torch.from_numpy(np.array(image))[None])
    req = ForgetRequest(
        checkpoint=str(imported),
        forget=("3",),
        out=str(tmp_path / "u.safetensors"),
        forget_samples_dir=str(folder),
        evaluate=False,
    )
    forget_set = _forget_set(req, load_checkpoint(imported), None, [3])
    expected = torch.cat([data_module.preprocess(prep.geometry(r[None]), prep.normalization) for r in raws])
    assert torch.equal(forget_set.inputs, expected)
    assert forget_set.labels.tolist() == [3] * 4
    result = invoke_cli(
        [
            "forget",
            imported,
            "--forget",
            "3",
            "--forget-images",
            folder,
            "--no-eval",
            "-q",
            "-o",
            tmp_path / "u.safetensors",
        ]
    )
    assert result.exit_code == 0, result.output


def test_load_image_folder_applies_a_preprocessing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k, (h, w) in enumerate([(10, 30), (25, 12)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    prep = Preprocessing(3, (6, 6), (0.5,) * 3, (0.5,) * 3, resize=8)
    images, names, owners = load_image_folder(folder, prep=prep)
    assert images.shape == (2, 3, 6, 6) and names == [] and owners == [-1, -1]
    first = torch.from_numpy(np.asarray(Image.open(folder / "0.png")).transpose(2, 0, 1).copy())
    assert torch.equal(torch.from_numpy(images[0]), prep.geometry(first[None])[0])


def test_import_stats_from_a_mixed_size_folder(tmp_path, digits, digits_checkpoint):
    """`import --stats-from folder:` reads photos of any size through the recorded preprocessing (resize + crop)."""
    from safetensors.torch import save_file

    from edge_unlearn.byom import record_stats_from
    from edge_unlearn.checkpoint import load_checkpoint, read_meta

    _digit_folder(tmp_path / "photos", digits, per_class=3)
    ck = load_checkpoint(digits_checkpoint)
    weights = tmp_path / "lenet.safetensors"
    save_file(
        {
            k: v.contiguous()
            for k, v in ck.model.state_dict().items()
            if k not in ("class_mask", "class_stats", "class_stats_count")
        },
        str(weights),
    )
    mean, std = ck.meta.normalization.mean[0], ck.meta.normalization.std[0]
    out = tmp_path / "imported.safetensors"
    result = invoke_cli(
        [
            "import",
            "--arch",
            "lenet",
            "--weights",
            weights,
            "--image-size",
            "8",
            "--resize",
            "10",
            "--channels",
            "1",
            "--mean",
            str(mean),
            "--std",
            str(std),
            "--stats-from",
            f"folder:{tmp_path / 'photos'}",
            "--stats-samples",
            "3",
            "-q",
            "-o",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    assert meta.preprocessing.resize == 10 and meta.preprocessing.crop == (8, 8)
    # the statistics are those of the folder's images through that preprocessing, read batch by batch
    data = load_dataset(f"folder:{tmp_path / 'photos'}", measure=False)
    model = load_checkpoint(out).model
    expected = model.class_stats.clone()
    model.class_stats.zero_()
    assert record_stats_from(model, data, meta.preprocessing, 3) == 3
    assert torch.allclose(model.class_stats, expected) and bool(expected.abs().sum() > 0)
