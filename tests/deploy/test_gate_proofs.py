"""The gate's proof against the attacks of issue #30, each hand-built with onnx.helper: a side branch that embeds the
original network and drives the retained logits below the fill when it says "3", a two-pixel marker trigger, an
input-dependent DequantizeLinear scale, the fill and the index map also declared as graph inputs (overridable at
run time), the original head feeding the output, and edited bundles (forget samples replaced, reference logits
recomputed). Each must be refused by `validate` (exit 2, "cannot prove ..." / a bundle digest that does not match)
or fail it (exit 1), and fail `build-engine --check-only`. Our own exports (FP32, FP16, INT8 in the cpu and
tensorrt layouts, dynamic INT8) must pass both.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edge_unlearn.cli import main
from edge_unlearn.deploy.bundle import load_bundle
from edge_unlearn.deploy.onnx_meta import MASK_VALUE, RETAINED_FLOOR, topological_sort
from edge_unlearn.deploy.structure import StructureError, analyse_mask
from tests.conftest import FORGET, one_line_error

from .tensorrt.conftest import FORGOTTEN, IMAGE, NUM_CLASSES, ours_fp32, write_bundle
from .test_gate_attacks import original_onnx, rewrite_bundle  # noqa: F401 - original_onnx is a fixture

FLOOR_INPUTS = ("edge_unlearn_above_floor", "edge_unlearn_floored")


def _validate(model, bundle) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["validate", str(model), "--bundle", str(bundle)])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def _check_only(model) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["build-engine", "--check-only", "--json", str(model)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _assert_refused(model, bundle, *needles: str) -> None:
    """validate: exit 2, one line naming "cannot prove" and each needle; check-only: exit 1 naming it too."""
    result = CliRunner().invoke(main, ["validate", str(model), "--bundle", str(bundle)])
    one_line_error(result, "cannot prove", *needles)
    code, out = _check_only(model)
    assert code == 1 and "cannot prove" in out, out


def _run(model: onnx.ModelProto, x: np.ndarray, **extra: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x, **extra})[0]


def _consumers_of(model: onnx.ModelProto, tensor: str, new: str, skip: tuple[str, ...] = ()) -> None:
    """Every node (but those writing ``skip``) that reads ``tensor`` reads ``new`` instead."""
    for node in model.graph.node:
        if not set(node.output) & set(skip):
            node.input[:] = [new if i == tensor else i for i in node.input]


def _bypass_floor(model: onnx.ModelProto) -> None:
    """The Pad reads the floor's input directly (the floor left dangling): the graph of an older export."""
    where = next(n for n in model.graph.node if n.op_type == "Where")
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    pad.input[0] = where.input[1]
    keep = [n for n in model.graph.node if not set(n.output) & set(FLOOR_INPUTS)]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _head_output(model: onnx.ModelProto) -> str:
    return next(n for n in model.graph.node if n.op_type == "Greater").input[0]


# ------------------------------------------------------------------------------------------------ our exports


@pytest.fixture(scope="module")
def cpu_layouts(artifacts, tmp_path_factory):
    """Our INT8 exports in the tensorrt and cpu layouts and dynamic INT8, through `edge-unlearn quantize`."""
    import contextlib
    import io

    from edge_unlearn.export.quantize import QuantizeConfig, quantize_model

    folder = tmp_path_factory.mktemp("layouts")
    calib = load_bundle(artifacts.bundle).inputs[:64]
    out = {}
    for name, config in {
        "tensorrt": QuantizeConfig(precision="int8", target="tensorrt"),
        "cpu": QuantizeConfig(precision="int8", target="cpu"),
        "dynamic": QuantizeConfig(precision="int8", target="cpu", mode="dynamic"),
    }.items():
        out[name] = folder / f"model.{name}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_model(artifacts.fp32, out[name], config, calib_inputs=calib)
    return out


@pytest.mark.parametrize("which", ["fp32", "fp16", "int8", "tensorrt", "cpu", "dynamic"])
def test_our_exports_are_proven(artifacts, cpu_layouts, which):
    path = cpu_layouts[which] if which in cpu_layouts else getattr(artifacts, which)
    code, out, err = _validate(path, artifacts.bundle)
    assert code == 0, out + err
    assert "[PASS] mask_structure" in out and "[PASS] retained_floor: 5000 > 0" in out, out
    if which in ("cpu", "dynamic"):  # build-engine refuses a CPU layout by design: the same checks, CPU rules
        from edge_unlearn.deploy.onnx_hazards import check_model

        report = check_model(onnx.load(str(path)), runtime="onnxruntime")
        assert report.ok, report.to_json()
        structure = report.to_dict()["structure"]
    else:
        code, out = _check_only(path)
        assert code == 0, out
        structure = json.loads(out)["structure"]
    structure = {c["name"]: c for c in structure}
    assert structure["head_rows"]["value"] == NUM_CLASSES - len(FORGET)
    assert structure["retained_floor"]["value"] == RETAINED_FLOOR - MASK_VALUE


def test_the_floor_holds_for_inputs_no_test_tries(artifacts):
    """What the proof means at run time: inputs of 1e30, inf and NaN drive the retained logits to +-inf or NaN;
    the output still never names the forgotten class, and its column is always exactly the fill."""
    model = onnx.load(str(artifacts.fp32))
    x = np.concatenate(
        [np.full((1, 1, 8, 8), v, np.float32) for v in (1e30, -1e30, np.inf, -np.inf, np.nan)]
        + [np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32) * 1e6]
    )
    with np.errstate(invalid="ignore", over="ignore"):
        logits = _run(model, x)
    assert np.all(logits[:, list(FORGET)] == np.float32(MASK_VALUE))
    retained = np.delete(logits, list(FORGET), axis=1)
    assert not np.isnan(retained).any() and np.all(retained >= RETAINED_FLOOR)
    assert not np.isin(logits.argmax(1), FORGET).any()


def test_an_export_without_the_floor_is_refused(artifacts, tmp_path):
    """A graph of the earlier shape (no floor): an input can push every retained logit below the fill."""
    model = onnx.load(str(artifacts.fp32))
    _bypass_floor(model)
    onnx.save(model, str(tmp_path / "old.onnx"))
    _assert_refused(tmp_path / "old.onnx", artifacts.bundle, "floor", "Re-export")


# ------------------------------------------------------------------------------------------------ triggers


def _embed_original(model: onnx.ModelProto, original: onnx.ModelProto) -> str:
    """Copy ``original``'s nodes and initializers into ``model`` (names prefixed, the image input shared); returns
    the name of its 10-class head output."""
    rename = {}
    for init in original.graph.initializer:
        rename[init.name] = "orig/" + init.name
    for node in original.graph.node:
        for out in node.output:
            rename[out] = "orig/" + out
    for init in original.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = rename[init.name]
        model.graph.initializer.append(copy)
    for node in original.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = "orig/" + node.name
        copy.input[:] = [rename.get(i, i) for i in node.input]
        copy.output[:] = [rename[o] for o in node.output]
        model.graph.node.append(copy)
    return rename[_head_output(original)]


def _penalty_nodes(condition: str, penalty: float = -1e6) -> tuple[list, list]:
    """condition (bool [B, 1]) -> penalty where true, 0 elsewhere, as tensor ``trigger_penalty``."""
    nodes = [
        helper.make_node("Cast", [condition], ["trigger_float"], to=TensorProto.FLOAT, name="trigger/cast"),
        helper.make_node("Mul", ["trigger_float", "trigger_scale"], ["trigger_penalty"], name="trigger/scale"),
    ]
    return nodes, [numpy_helper.from_array(np.array(penalty, np.float32), "trigger_scale")]


@pytest.mark.parametrize("floor", ["kept", "bypassed"])
def test_original_network_side_branch_trigger_is_refused(artifacts, original_onnx, tmp_path, floor):  # noqa: F811
    """The original network embedded as a side branch: when it says "3" every retained logit drops by 1e6
    (below the fill). The gate refuses: a tensor computed from the input joins the chain after the head."""
    model = onnx.load(str(artifacts.fp32))
    head_out = _head_output(model)
    original_logits = _embed_original(model, onnx.load(str(original_onnx)))
    says3 = [
        helper.make_node("ArgMax", [original_logits], ["trigger_class"], axis=1, keepdims=1, name="trigger/argmax"),
        helper.make_node("Equal", ["trigger_class", "trigger_three"], ["trigger_on"], name="trigger/equal"),
    ]
    nodes, inits = _penalty_nodes("trigger_on")
    add = helper.make_node("Add", [head_out, "trigger_penalty"], ["triggered"], name="trigger/apply")
    _consumers_of(model, head_out, "triggered", skip=("triggered",))
    model.graph.node.extend(says3 + nodes + [add])
    model.graph.initializer.extend(inits + [numpy_helper.from_array(np.array([FORGET[0]], np.int64), "trigger_three")])
    if floor == "bypassed":
        _bypass_floor(model)
    topological_sort(model)
    onnx.save(model, str(tmp_path / "trigger.onnx"))
    _assert_refused(tmp_path / "trigger.onnx", artifacts.bundle, "after the head" if floor == "kept" else "floor")
    bundle = load_bundle(artifacts.bundle)
    threes = bundle.inputs[bundle.labels == FORGET[0]]
    answers = _run(model, threes).argmax(1)
    if floor == "bypassed":  # the premise of the attack: the deployed file answers "3" for real threes
        assert np.mean(answers == FORGET[0]) > 0.9
    else:  # with the floor in place the trigger cannot even work
        assert not np.any(answers == FORGET[0])


def _marker_graph(where: str) -> onnx.ModelProto:
    """ours_fp32 with a two-pixel marker (pixel (0, 0) > 4 and pixel (0, 1) < -4): the penalty joins after the
    head (``where="after"``) or replaces the floor's input (``"floor"``)."""
    model = ours_fp32()
    marker = [
        helper.make_node("Slice", ["input", "px_start", "px_end", "px_axes"], ["px"], name="marker/slice"),
        helper.make_node("Reshape", ["px", "px_shape"], ["px2"], name="marker/reshape"),
        helper.make_node("Mul", ["px2", "px_sign"], ["px_signed"], name="marker/sign"),
        helper.make_node("ReduceMin", ["px_signed"], ["px_min"], axes=[1], keepdims=1, name="marker/min"),
        helper.make_node("Greater", ["px_min", "px_threshold"], ["marker_on"], name="marker/test"),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 0, 0], np.int64), "px_start"),
        numpy_helper.from_array(np.array([1, 1, 2], np.int64), "px_end"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "px_axes"),
        numpy_helper.from_array(np.array([-1, 2], np.int64), "px_shape"),
        numpy_helper.from_array(np.array([1.0, -1.0], np.float32), "px_sign"),
        numpy_helper.from_array(np.array(4.0, np.float32), "px_threshold"),
    ]
    nodes, penalty_inits = _penalty_nodes("marker_on")
    head_out = _head_output(model)
    if where == "after":
        apply = helper.make_node("Add", [head_out, "trigger_penalty"], ["triggered"], name="marker/apply")
        _consumers_of(model, head_out, "triggered", skip=("triggered",))
    else:  # the Where's "retained" input swapped for the triggered tensor, the Greater left on the head
        apply = helper.make_node("Add", [head_out, "trigger_penalty"], ["triggered"], name="marker/apply")
        where_node = next(n for n in model.graph.node if n.op_type == "Where")
        where_node.input[1] = "triggered"
    model.graph.node.extend(marker + nodes + [apply])
    model.graph.initializer.extend(inits + penalty_inits)
    topological_sort(model)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("where", ["after", "floor"])
def test_two_pixel_marker_trigger_is_refused(tmp_path, where):
    model = _marker_graph(where)
    path = tmp_path / "marker.onnx"
    onnx.save(model, str(path))
    bundle = write_bundle(tmp_path / "eval.npz", path)
    _assert_refused(path, bundle, "after the head" if where == "after" else "floor")
    marked = np.zeros((1, *IMAGE), np.float32)
    marked[0, 0, 0, 0], marked[0, 0, 0, 1] = 5.0, -5.0
    answer = _run(model, marked).argmax(1)[0]
    if where == "floor":  # a floor that no longer floors its own input: the marker makes a forgotten class win
        assert answer in FORGOTTEN
    else:
        assert answer not in FORGOTTEN


def test_a_trigger_inside_the_backbone_cannot_name_a_forgotten_class(tmp_path):
    """What the proof does not cover and what it still guarantees: a marker that feeds the head's input is part
    of the backbone (only `--audit` measures what the backbone knows), yet whatever it does, the output cannot
    be a forgotten class: the floor is proven."""
    model = ours_fp32()
    head = next(n for n in model.graph.node if n.op_type == "Gemm")
    marker = _marker_graph("after")
    nodes = [n for n in marker.graph.node if n.name.startswith(("marker/", "trigger/")) and n.name != "marker/apply"]
    model.graph.node.extend(nodes)
    names = {i for n in nodes for i in n.input}
    model.graph.initializer.extend(i for i in marker.graph.initializer if i.name in names)
    model.graph.node.append(helper.make_node("Add", [head.input[0], "trigger_penalty"], ["features_marked"]))
    head.input[0] = "features_marked"
    topological_sort(model)
    path = tmp_path / "inside.onnx"
    onnx.save(model, str(path))
    bundle = write_bundle(tmp_path / "eval.npz", ours_fp32_path(tmp_path))
    code, out, err = _validate(path, bundle)
    assert code == 0, out + err  # indistinguishable from a backbone: the structure is ours
    marked = np.zeros((4, *IMAGE), np.float32)
    marked[:, 0, 0, 0], marked[:, 0, 0, 1] = 5.0, -5.0
    with np.errstate(invalid="ignore", over="ignore"):
        marked[1:] *= np.array([1e3, 1e30, np.inf], np.float32)[:, None, None, None]
        logits = _run(model, marked)
    assert not np.isin(logits.argmax(1), FORGOTTEN).any()


def ours_fp32_path(folder) -> str:
    path = folder / "ours.onnx"
    onnx.save(ours_fp32(), str(path))
    return path


def test_the_original_head_feeding_the_output_fails_head_rows(tmp_path):
    """The original 10-class head kept inside the file, its logits concatenated to the features: the compact head
    has R columns, but head_rows fails since a C-column linear layer feeds the output."""
    model = ours_fp32()
    head = next(n for n in model.graph.node if n.op_type == "Gemm")
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    d = weights[head.input[1]].shape[1]
    original = np.random.default_rng(1).standard_normal((NUM_CLASSES, d)).astype(np.float32)
    wider = np.concatenate([weights[head.input[1]], np.zeros((len(weights[head.input[2]]), NUM_CLASSES))], 1)
    model.graph.initializer.extend(
        [numpy_helper.from_array(original, "original.weight"), numpy_helper.from_array(wider.astype(np.float32), "w2")]
    )
    model.graph.node.extend(
        [
            helper.make_node("Gemm", [head.input[0], "original.weight"], ["original_logits"], transB=1, name="orig"),
            helper.make_node("Concat", [head.input[0], "original_logits"], ["features_and_logits"], axis=1),
        ]
    )
    head.input[0], head.input[1] = "features_and_logits", "w2"
    topological_sort(model)
    path = tmp_path / "orig_head.onnx"
    onnx.save(model, str(path))
    code, out, err = _validate(path, write_bundle(tmp_path / "eval.npz", path))
    assert code == 1 and "[FAIL] head_rows: 10 == 8" in out and "original head" in out, out + err
    code, out = _check_only(path)
    assert code == 1 and "structure-head-rows" in out, out


# ------------------------------------------------------------------------------------------------ constants


def test_input_dependent_dequantize_scale_is_refused(artifacts, tmp_path):
    """The head's weight DequantizeLinear with a scale computed from the input (zero on a marker, say)."""
    model = onnx.load(str(artifacts.int8))
    head_out = _head_output(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers[head_out]
    while node.op_type not in ("Gemm", "MatMul"):
        node = producers[node.input[0]]
    dq = producers[node.input[1]]
    assert dq.op_type == "DequantizeLinear"
    model.graph.node.extend(
        [
            helper.make_node("ReduceMax", ["input"], ["input_max"], keepdims=0, name="attack/max"),
            helper.make_node("Mul", ["input_max", "attack_zero"], ["input_zero"], name="attack/zero"),
            helper.make_node("Add", [dq.input[1], "input_zero"], ["input_scale"], name="attack/scale"),
        ]
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "attack_zero"))
    dq.input[1] = "input_scale"
    topological_sort(model)
    path = tmp_path / "dq.onnx"
    onnx.save(model, str(path))
    _assert_refused(path, artifacts.bundle, "input_scale", "computed from the input")


@pytest.mark.parametrize("name", ["edge_unlearn_mask_value", "edge_unlearn_class_index", "head.weight"])
def test_constants_declared_as_graph_inputs_are_refused(tmp_path, name):
    """An initializer also declared as a graph input: onnxruntime lets the caller override it at run time."""
    model = ours_fp32()
    init = next(i for i in model.graph.initializer if i.name == name)
    model.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    path = tmp_path / "overridable.onnx"
    onnx.save(model, str(path))
    bundle = write_bundle(tmp_path / "eval.npz", ours_fp32_path(tmp_path))
    _assert_refused(path, bundle, name, "graph input")
    if name == "edge_unlearn_mask_value":  # the premise: a caller's fill of 1e5 makes a forgotten class win
        x = np.random.default_rng(0).standard_normal((4, *IMAGE)).astype(np.float32)
        logits = _run(model, x, edge_unlearn_mask_value=np.array(1e5, np.float32))
        assert np.isin(logits.argmax(1), FORGOTTEN).all()


def test_an_extra_graph_input_is_refused(tmp_path):
    model = ours_fp32()
    model.graph.input.append(helper.make_tensor_value_info("unlock", TensorProto.FLOAT, [1]))
    with pytest.raises(StructureError, match="cannot prove.*inputs"):
        analyse_mask(model, "logits")


# ------------------------------------------------------------------------------------------------ bundles


def _edit(arrays: dict, info: dict, how: str, reference_logits: np.ndarray | None = None) -> None:
    labels = arrays["labels"]
    if how == "forget samples replaced":
        threes = np.isin(labels, FORGET)
        donors = arrays["inputs"][~threes][: int(threes.sum())]
        arrays["inputs"] = arrays["inputs"].copy()
        arrays["inputs"][threes] = donors
    else:
        arrays["reference_logits"] = reference_logits


@pytest.mark.parametrize("how", ["forget samples replaced", "reference logits recomputed"])
def test_an_edited_bundle_is_refused(artifacts, original_onnx, tmp_path, how):  # noqa: F811
    """Samples or reference logits changed after `edge-unlearn bundle` wrote the file: the digest no longer
    matches (exit 2). A forger who also rewrites the digest must still name the checkpoint of the new reference
    logits: another one fails same_source_checkpoint (exit 1) or is refused by the provenance (exit 2)."""
    bundle = load_bundle(artifacts.bundle)
    bad_logits = _run(onnx.load(str(original_onnx)), bundle.inputs).astype(np.float32)
    with np.load(artifacts.bundle, allow_pickle=False) as loaded:
        arrays = {k: loaded[k] for k in loaded.files}
    info = json.loads(str(arrays.pop("meta_json")))
    _edit(arrays, info, how, bad_logits)
    with open(tmp_path / "edited.npz", "wb") as handle:  # the digest left as it was
        np.savez_compressed(handle, **arrays, meta_json=np.asarray(json.dumps(info)))
    result = CliRunner().invoke(main, ["validate", str(artifacts.fp32), "--bundle", str(tmp_path / "edited.npz")])
    one_line_error(result, "changed after the bundle was written", "edge-unlearn bundle")

    def other_checkpoint(arrays, info):
        _edit(arrays, info, how, bad_logits)
        info["provenance"]["checkpoint_sha256"] = "f" * 64

    rewrite_bundle(artifacts.bundle, tmp_path / "rehashed.npz", other_checkpoint)
    result = CliRunner().invoke(main, ["validate", str(artifacts.fp32), "--bundle", str(tmp_path / "rehashed.npz")])
    one_line_error(result, "reference logits were made by checkpoint ffffffffffff")

    def relabelled_source(arrays, info):
        other_checkpoint(arrays, info)
        info["source_sha256"] = "f" * 64

    rewrite_bundle(artifacts.bundle, tmp_path / "relabelled.npz", relabelled_source)
    code, out, err = _validate(artifacts.fp32, tmp_path / "relabelled.npz")
    assert code == 1 and "[FAIL] same_source_checkpoint" in out, out + err


def test_a_format_1_bundle_is_refused_with_how_to_remake_it(artifacts, tmp_path):
    with np.load(artifacts.bundle, allow_pickle=False) as loaded:
        arrays = {k: loaded[k] for k in loaded.files if k != "indices"}
    info = json.loads(str(arrays["meta_json"]))
    info["format"] = "edge-unlearn.bundle/1"
    for key in ("digest", "provenance"):
        info.pop(key)
    arrays["meta_json"] = np.asarray(json.dumps(info))
    np.savez(tmp_path / "old.npz", **arrays)
    result = CliRunner().invoke(main, ["validate", str(artifacts.fp32), "--bundle", str(tmp_path / "old.npz")])
    one_line_error(result, "edge-unlearn.bundle/1", "no digest", "edge-unlearn bundle CHECKPOINT")


def test_the_bundle_records_its_provenance(artifacts, digits):
    """make_bundle's provenance: the dataset's sha256 (the digits test split as the model reads it), every drawn
    row, the checkpoint's sha256; the digest covers them."""
    import hashlib

    from edge_unlearn.fileio import sha256_file

    bundle = load_bundle(artifacts.bundle)
    provenance = bundle.meta["provenance"]
    assert provenance["checkpoint_sha256"] == sha256_file(artifacts.checkpoint) == bundle.meta["source_sha256"]
    assert provenance["dataset"] == "digits" and provenance["split"] == "test"
    np.testing.assert_array_equal(bundle.labels, digits.y_test.numpy()[bundle.indices])
    split = hashlib.sha256(digits.y_test.numpy().astype("<i8").tobytes())
    for batch in digits.x_test.batches(256):
        split.update(batch.numpy().astype(np.uint8).tobytes())
    assert provenance["dataset_sha256"] == split.hexdigest()
    assert len(bundle.digest) == 64 and bundle.describe()["digest"] == bundle.digest
