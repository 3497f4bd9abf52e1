"""Issue #12's acceptance: a folder of JPEGs of random sizes (20×20 to 300×200, grey and colour mixed) in the
ImageFolder layout goes through train → forget → export → quantize → bundle → validate with --image-size 32."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import invoke_cli, shared_npz

TRAIN_PER_CLASS, TEST_PER_CLASS = 50, 20


def write_jpeg_folder(npz: str, root, seed: int = 0) -> int:
    """CIFAR-10 images as JPEGs of random size and mode under root/{train,test}/CLASS/; returns the count."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    count = 0
    with np.load(npz) as arrays:
        for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            for c in range(10):
                folder = root / split / str(c)
                folder.mkdir(parents=True)
                for k, i in enumerate(np.nonzero(y == c)[0][:per_class]):
                    image = Image.fromarray(x[i].transpose(1, 2, 0) if x.shape[1] == 3 else x[i])
                    image = image.resize((int(rng.integers(20, 301)), int(rng.integers(20, 201))), Image.BILINEAR)
                    if rng.random() < 0.3:
                        image = image.convert("L")
                    image.save(folder / f"{k}.jpg", quality=92)
                    count += 1
    return count


def _ok(args: list) -> None:
    result = invoke_cli(args)
    assert result.exit_code == 0, (args[0], result.output)


def test_mixed_size_jpeg_folder_runs_the_whole_pipeline(tmp_path):
    from PIL import Image

    from edge_unlearn.checkpoint import read_meta

    npz = shared_npz("cifar10")[4:]
    root = tmp_path / "photos"
    assert write_jpeg_folder(npz, root) == 10 * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    sizes = {Image.open(p).size for p in root.rglob("*.jpg")}
    modes = {Image.open(p).mode for p in root.rglob("*.jpg")}
    assert len(sizes) > 300 and modes == {"L", "RGB"}
    spec = f"folder:{root}"
    ckpt, forgot = tmp_path / "original.safetensors", tmp_path / "forgot.safetensors"
    _ok(
        [
            "train",
            "--dataset",
            spec,
            "--image-size",
            "32",
            "--arch",
            "lenet",
            "--epochs",
            "1",
            "--min-steps",
            "120",
            "--batch-size",
            "64",
            "--workers",
            "2",
            "-q",
            "--json-out",
            tmp_path / "train.json",
            "-o",
            ckpt,
        ]
    )
    meta = read_meta(ckpt)
    prep = meta.preprocessing
    assert prep is not None and prep.resize == 32 and prep.crop == (32, 32) and prep.channels == 3
    assert meta.input_shape == (3, 32, 32) and meta.class_names == tuple(str(c) for c in range(10))
    trained = json.loads((tmp_path / "train.json").read_text())
    assert trained["test_accuracy"] > 0.2  # chance is 0.1: it learned from the resized photos

    _ok(
        ["forget", ckpt, "--forget", "3", "--samples", "16", "-q", "--json-out", tmp_path / "forget.json", "-o", forgot]
    )
    forgotten = json.loads((tmp_path / "forget.json").read_text())
    assert forgotten["forget_acc"] == 0.0 and forgotten["per_class_accuracy"][3] == 0.0
    assert forgotten["retain_acc"] > 0.2
    assert read_meta(forgot).preprocessing == prep  # every later command reads the folder the same way

    onnx, int8, bundle = tmp_path / "forgot.onnx", tmp_path / "forgot.int8.onnx", tmp_path / "bundle.npz"
    _ok(["export", forgot, "-o", onnx, "-q"])
    _ok(
        [
            "quantize",
            onnx,
            "--calib",
            spec,
            "--calib-samples",
            "64",
            "--target",
            "cpu",
            "--workers",
            "2",
            "-o",
            int8,
            "-q",
            "--json-out",
            tmp_path / "quantize.json",
        ]
    )
    assert json.loads((tmp_path / "quantize.json").read_text())["precision"] == "int8"
    _ok(["bundle", forgot, "-o", bundle, "-q", "--json-out", tmp_path / "bundle.json"])
    assert json.loads((tmp_path / "bundle.json").read_text())["samples"] == 10 * TEST_PER_CLASS

    evaluated = invoke_cli(["evaluate", forgot, "--no-probe", "--json"])
    figures = json.loads(evaluated.output)
    assert figures["forget_acc"] == 0.0 and figures["retain_acc"] == forgotten["retain_acc"]
    # the FP32 export passes every check; the INT8 model (calibrated on the folder) keeps the classes forgotten
    # (its agreement with FP32 on a briefly trained lenet hovers near the 0.99 bar, so only the forgetting checks are
    # asserted for it; a well-trained model passes them all, see the quantized_forgetting benchmark)
    for model in (onnx, int8):
        result = invoke_cli(["validate", model, "--bundle", bundle, "--json"])
        report = json.loads(result.output)
        checks = {c["name"]: c for c in report["checks"]}
        if model == onnx:
            assert result.exit_code == 0 and report["verdict"] == "pass", [
                c for c in report["checks"] if not c["passed"]
            ]
        assert report["precision"] == ("fp32" if model == onnx else "int8")
        for name in (
            "forget_acc",
            "forgotten_class_wins",
            "forgotten_columns_constant",
            "fill_margin",
            "index_map",
            "head_rows",
            "same_source_checkpoint",
            "finite_outputs",
        ):
            assert checks[name]["passed"], (model, checks[name])
        assert checks["forget_acc"]["value"] == 0.0 and checks["retain_agreement"]["value"] > 0.9
