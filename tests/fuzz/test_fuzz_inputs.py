"""Property-based fuzzing of every file the CLI reads (issue #13): corrupt checkpoints, npz datasets, bundles, ONNX
metadata and run folders. For each generated input: exit code in {0, 1, 2}, no traceback, one stderr line for exit 2,
and no new file left behind when the command failed. Bounded and derandomized so CI runs it in well under two
minutes on 2 cores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import assert_clean_exit, invoke_cli

#: the checkpoint properties run the model on digits (about 0.5 s an example): fewer examples
SLOW = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: any JSON value, small
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _workdir(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


def _mutate(data: bytes, cuts: list[tuple[int, int]], truncate: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in cuts:
        if buf:
            buf[pos % len(buf)] = value
    if truncate is not None:
        buf = buf[: truncate % (len(buf) + 1)]
    return bytes(buf)


byte_edits = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=6)
truncations = st.none() | st.integers(0, 1 << 30)


# ------------------------------------------------------------------------------------------- checkpoints


@SLOW
@given(edits=byte_edits, truncate=truncations)
def test_corrupt_checkpoint_bytes(base, tmp_path_factory, edits, truncate):
    work = _workdir(tmp_path_factory, "ckpt")
    ckpt = work / "c.safetensors"
    ckpt.write_bytes(_mutate(base.checkpoint.read_bytes(), edits, truncate))
    before = {p.name for p in work.iterdir()}
    result = invoke_cli(["bundle", ckpt, "--dataset", "digits", "--per-class", "2", "-o", work / "b.npz"])
    assert_clean_exit(*result, before, work)


@SLOW
@given(
    field=st.sampled_from(
        ["arch", "num_classes", "class_names", "input_shape", "normalization", "forgotten_classes", "format", "lineage"]
    ),
    value=json_values,
)
def test_corrupt_checkpoint_header(base, tmp_path_factory, field, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    work = _workdir(tmp_path_factory, "hdr")
    with safe_open(str(base.checkpoint), framework="pt") as handle:
        header = json.loads(handle.metadata()["edge_unlearn"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    header[field] = value
    ckpt = work / "c.safetensors"
    save_file(tensors, str(ckpt), metadata={"edge_unlearn": json.dumps(header)})
    before = {p.name for p in work.iterdir()}
    result = invoke_cli(["bundle", ckpt, "--dataset", "digits", "--per-class", "2", "-o", work / "b.npz"])
    assert_clean_exit(*result, before, work)


# ------------------------------------------------------------------------------------------- npz datasets

shapes = st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.bool_])


@st.composite
def npz_datasets(draw):
    arrays = {}
    for name in ("x_train", "y_train", "x_test", "y_test", "class_names"):
        if draw(st.booleans()) if name == "class_names" else draw(st.integers(0, 9)) == 0:
            continue  # sometimes an array is missing
        if name == "class_names":
            arrays[name] = np.array(draw(st.lists(st.text(max_size=4), max_size=12)), dtype=np.str_)
        elif name.startswith("x"):
            shape = (
                draw(st.sampled_from([(6, 8, 8), (6, 1, 8, 8), (0, 8, 8), (6, 3, 8, 8), (6,)]))
                if draw(st.booleans())
                else draw(shapes)
            )
            with np.errstate(invalid="ignore"):
                arrays[name] = (draw(st.sampled_from([0.0, 1.0, 255.0, np.nan])) + np.zeros(shape)).astype(draw(dtypes))
        else:
            n = draw(st.integers(0, 8))
            labels = np.asarray(draw(st.lists(st.integers(-3, 14), min_size=n, max_size=n)), dtype=np.int64)
            arrays[name] = labels.astype(draw(st.sampled_from([np.int64, np.float32, np.uint8])))
    return arrays


@FUZZ
@given(arrays=npz_datasets())
def test_corrupt_npz_dataset(base, tmp_path_factory, arrays):
    work = _workdir(tmp_path_factory, "npz")
    data = work / "d.npz"
    np.savez(data, **arrays)
    before = {p.name for p in work.iterdir()}
    result = invoke_cli(["bundle", base.checkpoint, "--dataset", f"npz:{data}", "-o", work / "b.npz"])
    assert_clean_exit(*result, before, work)


# ------------------------------------------------------------------------------------------- bundles


@st.composite
def bundle_edits(draw):
    key = draw(
        st.sampled_from(
            ["inputs", "labels", "reference_logits", "class_names", "forgotten_classes", "meta_json", "__drop__"]
        )
    )
    kind = draw(st.sampled_from(["shape", "dtype", "nan", "json", "empty"]))
    return key, kind, draw(json_values), draw(shapes)


@FUZZ
@given(edit=bundle_edits())
def test_corrupt_bundle(base, tmp_path_factory, edit):
    key, kind, value, shape = edit
    work = _workdir(tmp_path_factory, "bundle")
    with np.load(base.bundle, allow_pickle=False) as loaded:
        arrays = {k: loaded[k] for k in loaded.files}
    if key == "__drop__":
        arrays.pop("labels")
    elif kind == "shape":
        arrays[key] = np.zeros(shape, dtype=arrays[key].dtype if arrays[key].dtype.kind != "U" else np.float32)
    elif kind == "dtype":
        arrays[key] = arrays[key].astype(np.str_) if arrays[key].dtype.kind != "U" else np.zeros(3)
    elif kind == "nan":
        if arrays[key].dtype.kind == "f":
            arrays[key] = np.full_like(arrays[key], np.nan)
    elif kind == "json":
        arrays["meta_json"] = np.asarray(json.dumps(value))
    elif arrays[key].ndim:
        arrays[key] = arrays[key][:0]
    bundle = work / "e.npz"
    np.savez(bundle, **arrays)
    before = {p.name for p in work.iterdir()}
    result = invoke_cli(["validate", base.onnx, "--bundle", bundle, "--json", work / "v.json"])
    assert_clean_exit(*result, before, work)


@FUZZ
@given(edits=byte_edits, truncate=truncations)
def test_corrupt_bundle_bytes(base, tmp_path_factory, edits, truncate):
    work = _workdir(tmp_path_factory, "bbytes")
    bundle = work / "e.npz"
    bundle.write_bytes(_mutate(base.bundle.read_bytes(), edits, truncate))
    before = {p.name for p in work.iterdir()}
    result = invoke_cli(["validate", base.onnx, "--bundle", bundle, "--json", work / "v.json"])
    assert_clean_exit(*result, before, work)


# ------------------------------------------------------------------------------------------- ONNX metadata


@FUZZ
@given(
    key=st.sampled_from(
        [
            "num_classes",
            "class_names",
            "forgotten_classes",
            "input_shape",
            "normalization",
            "mask_value",
            "input_name",
            "output_name",
            "precision",
            "format",
            "retained_name",
        ]
    ),
    value=json_values,
    raw=st.booleans(),
)
def test_corrupt_onnx_metadata(base, tmp_path_factory, key, value, raw):
    import onnx

    work = _workdir(tmp_path_factory, "meta")
    model = onnx.load(str(base.onnx))
    for prop in model.metadata_props:
        if prop.key == f"edge_unlearn.{key}":
            prop.value = str(value) if raw else json.dumps(value)
    path = work / "m.onnx"
    onnx.save(model, str(path))
    before = {p.name for p in work.iterdir()}
    result = invoke_cli(["validate", path, "--bundle", base.bundle, "--json", work / "v.json"])
    assert_clean_exit(*result, before, work)
    result = invoke_cli(["build-engine", "--check-only", path])
    assert_clean_exit(*result, before | {"v.json"}, work)


# ------------------------------------------------------------------------------------------- run folders


@st.composite
def run_folders(draw):
    records = draw(
        st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "format": st.just("edge-unlearn.record/1"),
                        "kind": st.sampled_from(["export", "validate", "bench"]) | json_values,
                        "payload": json_values,
                        "artefacts": st.lists(
                            st.fixed_dictionaries(
                                {
                                    "path": st.sampled_from(["model.onnx", "missing.onnx", "../x", "/etc/hostname"])
                                    | json_values,
                                    "sha256": st.text("0123456789abcdef", max_size=64) | json_values,
                                }
                            ),
                            max_size=3,
                        )
                        | json_values,
                    }
                ),
                json_values,
            ),
            max_size=3,
        )
    )
    manifest = draw(
        st.none()
        | json_values
        | st.fixed_dictionaries(
            {
                "format": st.just("edge-unlearn.manifest/1"),
                "files": st.lists(
                    st.fixed_dictionaries(
                        {"path": st.text(max_size=10) | json_values, "sha256": st.text(max_size=8) | json_values}
                    ),
                    max_size=3,
                )
                | json_values,
                "external": st.just([]) | json_values,
            }
        )
    )
    return records, manifest


@FUZZ
@given(folder=run_folders())
def test_corrupt_run_folder(base, tmp_path_factory, folder):
    records, manifest = folder
    work = _workdir(tmp_path_factory, "run")
    run = work / "run"
    (run / "records").mkdir(parents=True)
    shutil.copy(base.onnx, run / "model.onnx")
    for i, rec in enumerate(records, 1):
        (run / "records" / f"{i:04d}-export.json").write_text(json.dumps(rec))
    if manifest is not None:
        (run / "manifest.json").write_text(json.dumps(manifest))
    before = {p.name for p in work.iterdir()}
    assert_clean_exit(*invoke_cli(["verify", run]), before, work)
    files_before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    code, out, err = invoke_cli(["report", run, "-o", work / "r.html"])
    assert_clean_exit(code, out, err, before, work)
    if code != 0:  # a failed report changed nothing in the folder
        assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == files_before


@pytest.mark.parametrize("name", ["manifest.json", "records/0001-export.json"])
def test_zero_byte_evidence_files(base, tmp_path, name):
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    (run / name).write_bytes(b"")
    before = {p.name for p in tmp_path.iterdir()}
    assert_clean_exit(*invoke_cli(["verify", run]), before, tmp_path)
