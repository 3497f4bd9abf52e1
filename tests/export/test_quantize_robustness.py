"""Issue 30: `quantize` on a broken graph is one line and exit 2 (it gave five tracebacks), and onnxruntime's
temporary files (``sym_shape_infer_temp.onnx``, ``<uuid>.data``, the calibrator's augmented model) never stay in
the working folder, after success or failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_unlearn.errors import ModelFileError
from edge_unlearn.export.quantize import QuantizeConfig, onnxruntime_step, quantize_int8_proto
from tests.conftest import invoke_cli, one_line_error


def _unknown_op(model: onnx.ModelProto) -> None:
    model.graph.node[1].op_type = "FrobnicateXYZ"


def _cyclic(model: onnx.ModelProto) -> None:
    model.graph.node[0].input.append(model.graph.node[-1].output[0])


def _nan_weight(model: onnx.ModelProto) -> None:
    for i, tensor in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.size > 1:
            values = values.copy()
            values.flat[0] = np.nan
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, tensor.name))
            return
    raise AssertionError("no float weight to poison")


def _opset_999(model: onnx.ModelProto) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 999


def _extra_input(model: onnx.ModelProto) -> None:
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1, 4]))


BROKEN = {
    "unknown-op": (_unknown_op, "FrobnicateXYZ"),
    "cyclic": (_cyclic, "topologically sorted"),
    "nan-weight": (_nan_weight, "NaN/Inf"),
    "opset-999": (_opset_999, "opset 999"),
    "extra-input": (_extra_input, "'extra'"),
}


def _broken_copy(source: Path, folder: Path, kind: str) -> Path:
    model = onnx.load(str(source))
    BROKEN[kind][0](model)
    path = folder / f"{kind}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_graph_is_one_line_and_leaves_nothing(artifacts, tmp_path, monkeypatch, kind, precision):
    model = _broken_copy(artifacts.fp32, tmp_path, kind)
    monkeypatch.chdir(tmp_path)
    args = ["quantize", model.name, "--precision", precision, "-o", "out.onnx"]
    result = invoke_cli(args + (["--calib", "digits"] if precision == "int8" else []))
    one_line_error(result, BROKEN[kind][1])
    assert sorted(os.listdir(tmp_path)) == [model.name]


def test_success_leaves_only_the_output(artifacts, tmp_path, monkeypatch):
    shutil.copy(artifacts.fp32, tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    result = invoke_cli(
        ["quantize", "model.onnx", "--precision", "int8", "--calib", "digits", "--calib-samples", "32", "-o", "q.onnx"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "q.onnx"]


def test_onnxruntime_failure_inside_the_quantizer_is_contained(artifacts, tmp_path, monkeypatch):
    """Past the checks, straight into onnxruntime's symbolic shape inference, which writes its temporary model and
    external data into the working folder when it fails: the step turns the failure into one line and the
    working folder stays as it was."""
    model = _broken_copy(artifacts.fp32, tmp_path, "unknown-op")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(ModelFileError, match="onnxruntime could not make the int8 model") as caught:
        with onnxruntime_step(model, "int8"):
            quantize_int8_proto(
                model, tmp_path / "out.onnx", np.zeros((4, 1, 8, 8), np.float32), "input", QuantizeConfig(), []
            )
    assert "\n" not in str(caught.value)
    assert os.listdir(work) == []
    assert not (tmp_path / "out.onnx").exists()


def test_step_restores_the_working_folder_and_temp_dir(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.chdir(tmp_path)
    before = tempfile.tempdir
    with pytest.raises(ModelFileError, match="boom"):
        with onnxruntime_step(tmp_path / "m.onnx", "fp16"):
            Path("sym_shape_infer_temp.onnx").write_bytes(b"x")
            inside = Path.cwd()
            raise Exception("boom")  # noqa: TRY002 - what onnxruntime's shape inference raises
    assert Path.cwd() == tmp_path
    assert tempfile.tempdir == before
    assert not inside.exists()
    assert os.listdir(tmp_path) == []
