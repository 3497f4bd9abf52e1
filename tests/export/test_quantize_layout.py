"""INT8 layouts per target (issue 14): the pure layout decision from CPU flags, and every layout's graph on the
digits lenet of conftest.py -- mask nodes in float, no zero scales, metadata recorded, validate passes."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from edge_unlearn.deploy.onnx_meta import MASK_VALUE, mask_node_names, read_meta
from edge_unlearn.errors import UsageError
from edge_unlearn.export.quant_layout import (
    LAYOUT_KEY,
    REASON_KEY,
    TARGET_KEY,
    CpuFeatures,
    choose_layout,
    read_cpu_features,
    read_layout,
    require_tensorrt_layout,
    resolve_target,
)
from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

AVX2 = CpuFeatures("x86_64", frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"}))  # this project's AMD EPYC
AVX512_VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"}))
AVX_VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx_vnni"}))  # Alder Lake and later desktop cores
SAPPHIRE = CpuFeatures("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_fp16", "amx_int8"}))
ARM_DOT = CpuFeatures("aarch64", frozenset({"fp", "asimd", "asimdhp", "asimddp"}))
ARM_OLD = CpuFeatures("aarch64", frozenset({"fp", "asimd"}))
UNKNOWN = CpuFeatures("riscv64")


# ---- the decision (pure) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cpu, layout, activations, reduce_range",
    [
        (AVX2, "u8s8-qdq-reduce-range", "QUInt8", True),
        (AVX512_VNNI, "u8s8-qdq", "QUInt8", False),
        (AVX_VNNI, "u8s8-qdq", "QUInt8", False),
        (SAPPHIRE, "u8s8-qdq", "QUInt8", False),
        (ARM_DOT, "s8s8-qdq", "QInt8", False),
        (ARM_OLD, "s8s8-qdq", "QInt8", False),
        (UNKNOWN, "u8s8-qdq-reduce-range", "QUInt8", True),
    ],
)
def test_cpu_layout_follows_the_flags(cpu, layout, activations, reduce_range):
    chosen = choose_layout("cpu", cpu)
    assert (chosen.name, chosen.target, chosen.activation_type, chosen.weight_type, chosen.reduce_range) == (
        layout,
        "cpu",
        activations,
        "QInt8",
        reduce_range,
    )
    assert chosen.quantize_bias and not chosen.symmetric_activations and not chosen.dynamic
    assert chosen.reason.startswith(cpu.summary())


def test_the_reason_names_what_decided():
    assert "no VNNI" in choose_layout("cpu", AVX2).reason and "reduce_range" in choose_layout("cpu", AVX2).reason
    assert "with VNNI" in choose_layout("cpu", AVX512_VNNI).reason
    assert "with dot-product" in choose_layout("cpu", ARM_DOT).reason
    assert "no dot-product" in choose_layout("cpu", ARM_OLD).reason
    assert "unrecognised" in choose_layout("cpu", UNKNOWN).reason


@pytest.mark.parametrize("cpu", [AVX2, SAPPHIRE, ARM_DOT, UNKNOWN])
def test_tensorrt_layout_ignores_the_cpu(cpu):
    chosen = choose_layout("tensorrt", cpu)
    assert (chosen.name, chosen.activation_type, chosen.weight_type, chosen.reduce_range) == (
        "s8s8-qdq",
        "QInt8",
        "QInt8",
        False,
    )
    assert chosen.symmetric_activations and not chosen.quantize_bias and chosen.float_first_layer
    assert choose_layout("tensorrt", cpu, symmetric_activations=False).name == "s8s8-qdq-asymmetric"


def test_dynamic_and_fp16_layouts():
    dynamic = choose_layout("cpu", AVX2, mode="dynamic")
    assert (dynamic.name, dynamic.dynamic, dynamic.weight_type, dynamic.reduce_range) == (
        "dynamic-int8",
        True,
        "QUInt8",
        True,
    )
    assert choose_layout("cpu", AVX512_VNNI, mode="dynamic").reduce_range is False
    with pytest.raises(UsageError, match="--target cpu"):
        choose_layout("tensorrt", AVX2, mode="dynamic")
    assert "no native FP16" in choose_layout("cpu", AVX2, precision="fp16").reason
    assert "native FP16 arithmetic" in choose_layout("cpu", SAPPHIRE, precision="fp16").reason
    assert "native FP16 arithmetic" in choose_layout("cpu", ARM_DOT, precision="fp16").reason
    assert choose_layout("cpu", ARM_OLD, precision="fp16").name == "fp16"
    with pytest.raises(UsageError, match="tensorrt or cpu"):
        choose_layout("auto", AVX2)


def test_read_cpu_features_from_cpuinfo_text():
    x86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    got = read_cpu_features(x86, "x86_64")
    assert got == CpuFeatures("x86_64", frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"}))
    assert got.avx2 and not got.vnni and not got.avx512 and not got.native_fp16
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes asimdhp asimddp\n"
    got = read_cpu_features(arm, "aarch64")
    assert got.is_arm and got.arm_dotprod and got.native_fp16 and not got.is_x86
    assert read_cpu_features("", "x86_64").flags == frozenset()
    here = read_cpu_features()  # this machine: whatever it is, the decision is total
    assert choose_layout("cpu", here).name in ("u8s8-qdq-reduce-range", "u8s8-qdq", "s8s8-qdq")


def test_auto_target_is_cpu_unless_tensorrt_is_named():
    assert resolve_target("auto", "model.int8.onnx")[0] == "cpu"
    assert resolve_target("auto", "out/trt_model.onnx")[0] == "cpu"  # a name part, not a substring
    assert resolve_target("auto", "out/model.trt.onnx")[0] == "tensorrt"
    assert resolve_target("auto", "resnet.TensorRT.int8.onnx")[0] == "tensorrt"
    assert resolve_target("cpu", "model.trt.onnx") == ("cpu", "--target cpu")
    assert resolve_target("tensorrt", "model.onnx")[0] == "tensorrt"
    with pytest.raises(UsageError, match="tensorrt, cpu, auto"):
        resolve_target("gpu", "model.onnx")
    with pytest.raises(UsageError, match="unknown target"):
        QuantizeConfig(target="TensorRT ")


# ---- every layout's graph on the digits lenet ----------------------------------------------------------------

LAYOUTS = {  # name -> (QuantizeConfig arguments, the CPU it is decided for)
    "s8s8-qdq": ({"target": "tensorrt"}, AVX2),
    "u8s8-qdq-reduce-range": ({"target": "cpu"}, AVX2),
    "u8s8-qdq": ({"target": "cpu"}, AVX512_VNNI),
    "s8s8-qdq-arm": ({"target": "cpu"}, ARM_DOT),
    "dynamic-int8": ({"target": "cpu", "mode": "dynamic"}, AVX2),
}


@pytest.fixture(scope="module")
def layouts(artifacts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("layouts")
    made = {}
    for name, (kwargs, cpu) in LAYOUTS.items():
        out = folder / f"{name}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            made[name] = quantize_model(artifacts.fp32, out, QuantizeConfig(**kwargs), calib="digits", cpu=cpu)
    return made


def _zero_points(proto, op: str) -> list[np.ndarray]:
    inits = {t.name: t for t in proto.graph.initializer}
    return [
        numpy_helper.to_array(inits[n.input[2]])
        for n in proto.graph.node
        if n.op_type == op and len(n.input) > 2 and n.input[2] in inits
    ]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_graph_keeps_the_mask_in_float(name, layouts, artifacts):
    result = layouts[name]
    proto = onnx.load(str(result.path))
    fp32 = onnx.load(str(artifacts.fp32))
    mask_nodes = mask_node_names(fp32)
    by_name = {n.name: n for n in proto.graph.node}
    assert all(m in by_name for m in mask_nodes)
    initializers = {t.name for t in proto.graph.initializer}
    # the mask's outputs and constants (fill value, pads, index map); its data input is the float head output
    mask_tensors = {t for m in mask_nodes for t in by_name[m].output} | {
        t for m in mask_nodes for t in by_name[m].input if t in initializers
    }
    assert len(mask_tensors) >= 4
    quant_ops = {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "ConvInteger",
        "MatMulInteger",
        "QLinearMatMul",
    }
    for node in proto.graph.node:  # nothing quantizes or dequantizes a tensor of the mask nodes
        if node.op_type in quant_ops:
            assert not mask_tensors.intersection(node.input) and not mask_tensors.intersection(node.output), node.name
    # the fill constant is the float mask value and the head is compact: R retained rows, forgotten ones absent
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    pad = next(by_name[m] for m in mask_nodes if by_name[m].op_type == "Pad")
    assert inits[pad.input[2]].dtype == np.float32 and float(inits[pad.input[2]]) == MASK_VALUE
    meta = read_meta(proto)
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    scales = [
        numpy_helper.to_array(proto.graph.initializer[i])
        for i, t in enumerate(proto.graph.initializer)
        if t.name.endswith("_scale")
    ]
    assert all(np.all(s > 0) and np.all(np.isfinite(s)) for s in scales)  # no zero scales
    assert meta.precision == "int8" and meta.forgotten_classes == (3,)
    assert len(scales) > 0 or name == "dynamic-int8"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_is_recorded_and_validate_passes(name, layouts, artifacts):
    from edge_unlearn.deploy.validate import validate_model

    result = layouts[name]
    expected_layout = name.removesuffix("-arm")
    props = {p.key: p.value for p in onnx.load(str(result.path), load_external_data=False).metadata_props}
    target = LAYOUTS[name][0]["target"]
    assert (props[LAYOUT_KEY], props[TARGET_KEY]) == (expected_layout, target)
    assert props[REASON_KEY] == result.layout.reason and props[REASON_KEY]
    assert read_layout(result.path) == {"layout": expected_layout, "target": target, "reason": result.layout.reason}
    assert read_meta(result.path).quantization["layout"]["name"] == expected_layout
    report = validate_model(result.path, artifacts.bundle, provider="cpu")
    assert report, report.summary()


def test_layouts_differ_where_the_decision_says(layouts):
    """uint8 activations for the x86 cpu layouts, int8 with zero point 0 for tensorrt, int8 for ARM;
    reduce_range keeps weights within 7 bits (|w| <= 64), full range reaches 127."""
    protos = {name: onnx.load(str(r.path)) for name, r in layouts.items()}
    for name, dtype in (
        ("u8s8-qdq-reduce-range", np.uint8),
        ("u8s8-qdq", np.uint8),
        ("s8s8-qdq", np.int8),
        ("s8s8-qdq-arm", np.int8),
    ):
        zps = _zero_points(protos[name], "QuantizeLinear")
        assert zps and all(z.dtype == dtype for z in zps), name
    assert all(np.all(z == 0) for z in _zero_points(protos["s8s8-qdq"], "QuantizeLinear"))
    assert any(np.any(z != 0) for z in _zero_points(protos["u8s8-qdq-reduce-range"], "QuantizeLinear"))

    def weight_peak(proto) -> int:
        return max(
            int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max())
            for t in proto.graph.initializer
            if t.data_type == TensorProto.INT8 and t.name.endswith("_quantized") and "bias" not in t.name
        )

    assert weight_peak(protos["u8s8-qdq-reduce-range"]) <= 64
    assert weight_peak(protos["u8s8-qdq"]) == 127
    # tensorrt keeps biases in float and the first conv in float; the cpu layouts quantize both
    int32 = {name: any(t.data_type == TensorProto.INT32 for t in p.graph.initializer) for name, p in protos.items()}
    assert int32 == {
        "s8s8-qdq": False,
        "u8s8-qdq-reduce-range": True,
        "u8s8-qdq": True,
        "s8s8-qdq-arm": True,
        "dynamic-int8": False,
    }
    first = {name: next(n for n in p.graph.node if "input" in n.input).op_type for name, p in protos.items()}
    assert first["s8s8-qdq"] == "Conv" and first["u8s8-qdq-reduce-range"] == "QuantizeLinear"
    assert {n.op_type for n in protos["dynamic-int8"].graph.node} >= {"DynamicQuantizeLinear"}


def test_tensorrt_refuses_cpu_layouts_with_the_fix(layouts, artifacts):
    require_tensorrt_layout(layouts["s8s8-qdq"].path)
    require_tensorrt_layout(artifacts.fp32)
    require_tensorrt_layout(artifacts.fp16)  # written by the library default (tensorrt)
    for name in ("u8s8-qdq-reduce-range", "u8s8-qdq", "s8s8-qdq-arm", "dynamic-int8"):
        with pytest.raises(UsageError, match="--target tensorrt") as err:
            require_tensorrt_layout(layouts[name].path, where=name)
        assert name.removesuffix("-arm") in str(err.value) and "\n" not in str(err.value)


# ---- the CLI ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    from click.testing import CliRunner

    from edge_unlearn.cli import main

    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_target_prints_and_records_the_layout(cli, artifacts, tmp_path):
    here = choose_layout("cpu", read_cpu_features())
    out = tmp_path / "m.int8.onnx"
    result = cli("quantize", artifacts.fp32, "--calib", "digits", "-o", out)  # default: auto -> cpu
    assert result.exit_code == 0, result.output
    assert f"layout {here.name} (target cpu; --target auto" in result.output and here.reason in result.output
    assert read_layout(out)["layout"] == here.name
    named = tmp_path / "m.trt.onnx"
    result = cli("quantize", artifacts.fp32, "--calib", "digits", "-o", named, "-q")
    assert result.exit_code == 0 and result.output == ""
    assert read_layout(named)["layout"] == "s8s8-qdq" and read_layout(named)["target"] == "tensorrt"
    forced = tmp_path / "m.trt2.onnx"
    result = cli("quantize", artifacts.fp32, "--target", "cpu", "--calib", "digits", "-o", forced, "-q")
    assert result.exit_code == 0 and read_layout(forced)["target"] == "cpu"
    dynamic = tmp_path / "m.dyn.onnx"
    result = cli("quantize", artifacts.fp32, "--dynamic", "-o", dynamic, "-q")  # no --calib needed
    assert result.exit_code == 0, result.output
    assert read_layout(dynamic)["layout"] == "dynamic-int8"


def test_cli_bad_target_values(cli, artifacts, tmp_path):
    out = tmp_path / "q.onnx"
    result = cli("quantize", artifacts.fp32, "--calib", "digits", "--target", "gpu", "-o", out)
    assert result.exit_code == 2 and "'--target'" in result.output and "tensorrt" in result.output
    result = cli("quantize", artifacts.fp32, "--dynamic", "--target", "tensorrt", "-o", out)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "--target cpu" in lines[0] and "--dynamic" in lines[0]
    result = cli("quantize", artifacts.fp32, "--dynamic", "--precision", "fp16", "--target", "cpu", "-o", out)
    assert result.exit_code == 2 and "INT8 only" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []
