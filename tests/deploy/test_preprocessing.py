"""The preprocessing record on the deployment side (issue #11): the ONNX metadata carries the checkpoint's full
``Preprocessing``, the torch-free twin (edge_unlearn/deploy/preprocessing.py) applies it bit-identically to the host's
``Preprocessing.geometry``, and ``quantize --calib`` on an imported model with a resize calibrates on inputs
prepared exactly as the host prepares them. ONNX files without the record keep their plain preprocessing."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_unlearn.data import Preprocessing
from edge_unlearn.deploy.onnx_meta import OnnxMeta, read_meta, write_meta
from edge_unlearn.deploy.preprocessing import GEOMETRY_TOLERANCE, ImagePreprocessing
from edge_unlearn.errors import DataError, ModelFileError
from edge_unlearn.export.quantize import calibration_batch, calibration_inputs, normalize
from tests.conftest import invoke_cli


def _native_uint8(interpolation: str) -> bool:
    """Whether torchvision resizes uint8 natively on this CPU (then the twin is bit-exact, else within 1 level)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2.functional import _geometry

    if interpolation == "nearest":
        return True
    native = getattr(_geometry, "_do_native_uint8_resize_on_cpu", None)
    return bool(native(InterpolationMode(interpolation))) if native else False


CASES = [  # (images N×C×H×W, record channels, crop, resize): odd sizes, grey <-> RGB, up and down, H×W resize
    ((5, 3, 37, 53), 3, (24, 24), 29),
    ((4, 1, 31, 45), 3, (32, 32), 40),
    ((4, 3, 33, 31), 1, (64, 64), 64),
    ((3, 3, 97, 61), 3, (17, 19), (21, 23)),
    ((3, 3, 50, 51), 3, (29, 30), None),
    ((2, 3, 175, 250), 3, (112, 112), 128),
]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("shape,channels,crop,resize", CASES)
def test_device_geometry_equals_the_hosts(shape, channels, crop, resize, interpolation):
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    images[0] = np.linspace(0, 255, shape[2] * shape[3]).reshape(shape[2:]).astype(np.uint8)  # smooth ramps too
    host = Preprocessing(
        channels, crop, (0.5,) * channels, (0.25,) * channels, resize=resize, interpolation=interpolation
    )
    device = ImagePreprocessing.from_json(json.loads(json.dumps(host.to_json())))
    want = host.geometry(torch.from_numpy(images)).numpy()
    got = device.geometry(images)
    assert got.shape == want.shape == (shape[0], channels, *crop) and got.dtype == np.uint8
    diff = int(np.abs(got.astype(int) - want.astype(int)).max())
    assert diff <= (0 if _native_uint8(interpolation) else GEOMETRY_TOLERANCE), diff
    if diff == 0:  # then the model input is the same float32 bits
        np.testing.assert_array_equal(device(images), host(torch.from_numpy(images)).numpy())


def test_device_geometry_refuses_what_the_host_refuses():
    device = ImagePreprocessing(3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(DataError, match="images are 28×28 but the model takes 32×32"):
        device.geometry(np.zeros((1, 3, 28, 28), np.uint8))
    with pytest.raises(DataError, match="uint8"):
        device.geometry(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(DataError, match="2 channels"):
        device.geometry(np.zeros((1, 2, 32, 32), np.uint8))


def _meta(**kw) -> OnnxMeta:
    base = dict(
        num_classes=3,
        class_names=("a", "b", "c"),
        forgotten_classes=(1,),
        input_shape=(3, 24, 24),
        normalization={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
        source_sha256="0" * 64,
    )
    base.update(kw)
    return OnnxMeta(**base)


def test_onnx_metadata_round_trips_the_preprocessing_record():
    import onnx

    host = Preprocessing(3, (24, 24), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), resize=(26, 30), interpolation="bicubic")
    model = onnx.ModelProto()
    write_meta(model, _meta(preprocessing=host.to_json()))
    meta = read_meta(model)
    assert meta.prep.to_json() == host.to_json() and Preprocessing.from_json(meta.prep.to_json()) == host
    # an edited record is refused in one line, never applied
    for bad, needle in (
        ({**host.to_json(), "crop": [20, 20]}, "disagrees with the input shape"),
        ({**host.to_json(), "mean": [0.1, 0.4, 0.3]}, "disagrees"),
        ({**host.to_json(), "version": 2}, "version 2"),
        ({**host.to_json(), "interpolation": "lanczos"}, "interpolation"),
        ({"channels": 3}, "damaged"),
    ):
        write_meta(model, _meta(preprocessing=bad))
        with pytest.raises(ModelFileError, match=needle):
            read_meta(model)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {}, optional={k: _json for k in ("version", "channels", "resize", "crop", "interpolation", "mean", "std")}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=_json | _fields, raw=st.booleans())
def test_any_edited_record_reads_or_fails_in_one_line(record, raw):
    """Whatever the preprocessing entry holds, reading the metadata gives a usable record or a ModelFileError."""
    props = _meta().to_props()
    props["edge_unlearn.preprocessing"] = str(record) if raw else json.dumps(record)
    try:
        meta = OnnxMeta.from_props(props, "m.onnx")
    except ModelFileError as exc:
        assert "\n" not in str(exc)
        return
    prep = meta.prep
    assert prep.input_shape == meta.input_shape
    assert prep(np.zeros((1, 3, 30, 30), np.uint8) if prep.resize else np.zeros((1, 3, 24, 24), np.uint8)).shape == (
        1,
        *meta.input_shape,
    )


def test_onnx_without_the_record_reads_the_plain_preprocessing(tmp_path):
    import onnx

    model = onnx.ModelProto()
    write_meta(model, _meta())
    props = {p.key: p.value for p in model.metadata_props}
    del props["edge_unlearn.preprocessing"]  # a file exported before the record existed
    meta = OnnxMeta.from_props(props, "old.onnx")
    assert meta.preprocessing == {} and meta.prep.resize is None and meta.prep.input_shape == (3, 24, 24)
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 24, 24), dtype=np.uint8)
    np.testing.assert_array_equal(calibration_batch(images, meta), normalize(images, meta.normalization))
    # an old file still refuses calibration images of another size (it cannot know how to resize them)
    npz = tmp_path / "other.npz"
    np.savez(
        npz,
        x_train=images[:, :, :20, :20],
        y_train=np.array([0, 2, 0, 2]),
        x_test=images[:2, :, :20, :20],
        y_test=np.array([0, 2]),
    )
    with pytest.raises(Exception, match=r"calibration images are \(3, 20, 20\)"):
        calibration_inputs(f"npz:{npz}", replace(meta, num_classes=3), samples=4)


@pytest.fixture(scope="module")
def imported_with_resize(tmp_path_factory, trained):
    """The session's digits lenet (8×8 grey), imported as a user's model whose preprocessing resizes to 10 and
    crops the centre 8×8."""
    folder = tmp_path_factory.mktemp("resize")
    state = {k: v for k, v in trained[0].state_dict().items() if not k.startswith("class_")}
    torch.save(state, folder / "lenet.pth")
    ck = folder / "imported.safetensors"
    result = invoke_cli(
        [
            "import",
            "--arch",
            "lenet",
            "--weights",
            folder / "lenet.pth",
            "--dataset",
            "digits",
            "--image-size",
            "8",
            "--resize",
            "10",
            "--preset",
            "dataset",
            "-o",
            ck,
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output
    onnx_path = folder / "model.onnx"
    result = invoke_cli(["export", ck, "-o", onnx_path, "-q"])
    assert result.exit_code == 0, result.output
    return ck, onnx_path


def test_quantize_calib_on_an_imported_model_with_resize(imported_with_resize, tmp_path, digits):
    from edge_unlearn.checkpoint import load_checkpoint

    ck, onnx_path = imported_with_resize
    host = load_checkpoint(ck).meta.prep
    meta = read_meta(onnx_path)
    assert host.resize == 10 and meta.prep.to_json() == host.to_json()
    # every calibration input is one of the training images exactly as the host prepares it
    inputs, classes = calibration_inputs("digits", meta, samples=24)
    prepared = host(digits.x_train[:]).numpy().reshape(len(digits.x_train), -1)
    index = {row.tobytes(): i for i, row in enumerate(prepared)}
    assert inputs.shape == (24, 1, 8, 8) and all(row.tobytes() in index for row in inputs.reshape(24, -1))
    picked = np.array([index[row.tobytes()] for row in inputs.reshape(24, -1)])
    assert sorted(set(digits.y_train[picked].tolist())) == classes
    out = tmp_path / "model.int8.onnx"
    result = invoke_cli(["quantize", onnx_path, "--calib", "digits", "--calib-samples", "32", "-o", out, "--json"])
    assert result.exit_code == 0, result.output
    quantized = read_meta(out)
    assert quantized.precision == "int8" and quantized.prep == meta.prep  # the record travels with the file
