"""Bring your own model: architectures, weights files, preprocessing record, data-free NHLE, wrap()."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from edge_unlearn.byom import ImportRequest, import_checkpoint, read_state_dict, unwrap_state_dict
from edge_unlearn.checkpoint import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from edge_unlearn.cli import main
from edge_unlearn.data import IMAGENET_MEAN, IMAGENET_STD, Normalization, Preprocessing, prepare_dataset
from edge_unlearn.errors import CheckpointError, UsageError
from edge_unlearn.models import (
    TORCHVISION_UNSPLITTABLE,
    ArchSpec,
    build_original,
    head_path,
    split_classifier,
    torchvision_classifiers,
    torchvision_head_path,
    wrap,
)
from edge_unlearn.unlearn import ForgetSet, forget
from edge_unlearn.unlearn.nhle import batchnorm_feature_mean

MEAN, STD = "0.5,0.5,0.5", "0.25,0.25,0.25"


def _tv(name: str, **kwargs) -> ArchSpec:
    return ArchSpec("torchvision", name, tuple(sorted(kwargs.items())))


# ---------------------------------------------------------------------------------------------
# Architectures


def test_every_torchvision_classifier_has_a_head_or_a_reason():
    names = torchvision_classifiers()
    assert len(names) > 70 and "resnet18" in names
    for name in names:
        if any(name.startswith(p) for p in TORCHVISION_UNSPLITTABLE):
            with pytest.raises(UsageError, match="cannot be imported: .*ReLU"):
                torchvision_head_path(name)
        else:
            assert torchvision_head_path(name) in ("fc", "classifier[-1]", "classifier", "heads.head", "head")


@pytest.mark.parametrize(
    "name",
    [
        "alexnet",
        "convnext_tiny",
        "densenet121",
        "efficientnet_v2_s",
        "googlenet",
        "inception_v3",
        "maxvit_t",
        "mnasnet0_5",
        "mobilenet_v2",
        "resnext50_32x4d",
        "shufflenet_v2_x0_5",
        "swin_v2_t",
        "vgg11",
        "vit_b_32",
        "wide_resnet50_2",
    ],
)
def test_each_torchvision_family_splits_into_a_linear_head(name):
    spec = _tv(name)
    with torch.device("meta"):
        model = split_classifier(spec, build_original(spec, 7))
    assert isinstance(model.head, nn.Linear) and model.num_classes == 7
    assert not any(isinstance(m, nn.Linear) and m.out_features == 7 for m in model.backbone.modules())


@pytest.mark.parametrize(
    "name,size",
    [
        ("resnet18", 32),
        ("mobilenet_v3_small", 32),
        ("densenet121", 32),
        ("regnet_x_400mf", 32),
        ("googlenet", 32),
        ("efficientnet_b0", 32),
        ("swin_t", 32),
        ("mnasnet0_5", 32),
    ],
)
def test_adapted_model_has_the_original_logits(name, size):
    spec = _tv(name)
    torch.manual_seed(0)
    original = build_original(spec, 5).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = original(x)
        adapted = split_classifier(spec, original).eval()
        assert torch.equal(adapted.logits(x, masked=False), reference)


def test_vit_head_split_is_exact():
    spec = _tv("vit_b_32", image_size=64)
    torch.manual_seed(0)
    original = build_original(spec, 4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = original(x)
        assert head_path(spec, original) == "heads.head"
        assert torch.equal(split_classifier(spec, original).logits(x, masked=False), reference)


# ---------------------------------------------------------------------------------------------
# Weights files


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """A torchvision resnet18 with the CIFAR stem, 4 classes, as a user's script would build it."""
    torch.manual_seed(0)
    net = build_original(ArchSpec("torchvision", "resnet18", adapt=(("cifar_stem", True),)), 4).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("weights")
    torch.save(net.state_dict(), folder / "plain.pth")
    return net, folder


def _request(weights, out, **kw) -> ImportRequest:
    base = dict(
        arch="torchvision:resnet18",
        weights=str(weights),
        output=str(out),
        image_size=(16, 16),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        cifar_stem=True,
    )
    base.update(kw)
    return ImportRequest(**base)


def test_import_roundtrip_keeps_logits_and_records_how_to_rebuild(resnet_weights, tmp_path):
    net, folder = resnet_weights
    out = tmp_path / "m.safetensors"
    summary = import_checkpoint(_request(folder / "plain.pth", out))
    assert summary["num_classes"] == 4 and summary["head"] == "fc.weight"
    meta = read_meta(out)
    assert meta.architecture == ArchSpec("torchvision", "resnet18", adapt=(("cifar_stem", True),))
    assert meta.preprocessing.crop == (16, 16) and meta.input_shape == (3, 16, 16)
    assert meta.lineage[0]["method"] == "import" and "data-free" in meta.lineage[0]["class_stats"]
    loaded = load_checkpoint(out).model
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(x, masked=False), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module_prefix", "compiled_prefix", "safetensors"])
def test_common_wrappers_load_the_same_weights(resnet_weights, tmp_path, wrapper):
    net, _ = resnet_weights
    state = net.state_dict()
    path = tmp_path / ("w.safetensors" if wrapper == "safetensors" else "w.pth")
    if wrapper == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif wrapper == "module_prefix":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 9}, path)
    elif wrapper == "compiled_prefix":
        torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, path)
    else:
        torch.save({wrapper: state, "optimizer": {"lr": 0.1}}, path)
    got = read_state_dict(path)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def test_unwrap_rejects_non_tensor_content():
    with pytest.raises(CheckpointError, match="not a state dict"):
        unwrap_state_dict({"epoch": 3, "lr": 0.1})


def _cli(args):
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    "case", ["unknown_arch", "other_arch", "num_classes", "class_file", "pickle_with_code", "conv_head", "missing_norm"]
)
def test_bad_input_is_one_line_exit_2_and_no_file(resnet_weights, tmp_path, case):
    net, folder = resnet_weights
    out = tmp_path / "out.safetensors"
    args = [
        "import",
        "--arch",
        "torchvision:resnet18",
        "--cifar-stem",
        "--weights",
        str(folder / "plain.pth"),
        "--image-size",
        "16",
        "--mean",
        MEAN,
        "--std",
        STD,
        "-o",
        str(out),
    ]
    expect = ""
    if case == "unknown_arch":
        args[2], expect = "torchvision:resnet19", "unknown torchvision classifier 'resnet19'"
    elif case == "other_arch":
        args[2], expect = "torchvision:resnet34", r"first mismatching key|key layer1\.2\.conv1\.weight"
    elif case == "num_classes":
        args += ["--num-classes", "10"]
        expect = "head fc.weight has 4 classes but --num-classes says 10"
    elif case == "class_file":
        names = tmp_path / "classes.txt"
        names.write_text("cat\ndog\nbird\n")
        args += ["--classes", str(names)]
        expect = "has 4 classes but --classes .* names 3"
    elif case == "pickle_with_code":
        torch.save(net, tmp_path / "whole.pth")
        args[5], expect = str(tmp_path / "whole.pth"), "pickle that needs code to load"
    elif case == "conv_head":
        args[2], expect = "torchvision:squeezenet1_1", "cannot be imported: its classifier is Conv2d"
    elif case == "missing_norm":
        args = [a for a in args if a not in ("--mean", MEAN, "--std", STD)]
        expect = "pass --mean and --std"
    result = _cli(args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert pytest.importorskip("re").search(expect, lines[0]), lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_other_arch_names_the_first_mismatching_key_and_both_shapes(resnet_weights, tmp_path):
    _, folder = resnet_weights
    result = _cli(
        [
            "import",
            "--arch",
            "torchvision:resnet18",
            "--weights",
            str(folder / "plain.pth"),
            "--image-size",
            "16",
            "--mean",
            MEAN,
            "--std",
            STD,
            "-o",
            str(tmp_path / "o.safetensors"),
        ]
    )
    assert result.exit_code == 2
    assert (
        "first mismatching key conv1.weight: file has shape [64, 3, 3, 3], torchvision:resnet18 has [64, 3, 7, 7]"
    ) in result.output and "--cifar-stem" in result.output


def test_loading_refuses_a_user_module_without_its_code(tmp_path):
    model = wrap(_UserNet(), head="fc")
    meta = CheckpointMeta(
        "python:_UserNet",
        3,
        ("a", "b", "c"),
        (1, 8, 8),
        Normalization((0.5,), (0.25,)),
        architecture=ArchSpec("python", "tests._UserNet"),
    )
    path = tmp_path / "user.safetensors"
    save_checkpoint(path, model, meta)
    with pytest.raises(CheckpointError, match=r"user-built module .*wrap\(YourModule"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, model=wrap(_UserNet(), head="fc"))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.model.logits(x), model.eval().logits(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# wrap()


class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.body(x))


class _PostHeadNet(_UserNet):
    def forward(self, x):
        return self.fc(self.body(x)) * 2.0


def test_wrap_keeps_outputs_and_rejects_a_head_that_is_not_last():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    net = _UserNet().eval()
    with torch.no_grad():
        reference = net(x)
    model = wrap(net, head="fc", example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x, masked=False), reference, rtol=0, atol=0)
    with pytest.raises(UsageError, match="changes its outputs"):
        wrap(_PostHeadNet(), head="fc", example_input=x)
    with pytest.raises(UsageError, match="not nn.Linear"):
        wrap(_UserNet(), head="body.0")


# ---------------------------------------------------------------------------------------------
# Preprocessing record


def test_preprocessing_record_roundtrip_version_and_v2_pipeline():
    prep = Preprocessing(3, (24, 24), IMAGENET_MEAN, IMAGENET_STD, resize=28)
    assert Preprocessing.from_json(json.loads(json.dumps(prep.to_json()))) == prep
    with pytest.raises(UsageError, match="version 2"):
        Preprocessing.from_json({**prep.to_json(), "version": 2})
    images = torch.randint(0, 256, (3, 1, 32, 40), dtype=torch.uint8)
    batch = prep(images)
    assert batch.shape == (3, 3, 24, 24)
    streamed = torch.stack([prep.transforms()(im) for im in images])
    torch.testing.assert_close(batch, streamed, rtol=0, atol=1e-6)


def test_prepare_dataset_converts_channels_and_size(digits):
    prep = Preprocessing(3, (16, 16), (0.5,) * 3, (0.25,) * 3, resize=(16, 16))
    data = prepare_dataset(digits, prep)
    assert data.input_shape == (3, 16, 16) and data.normalization == prep.normalization
    assert torch.equal(data.x_test[:, 0], data.x_test[:, 2]) and len(data.x_train) == len(digits.x_train)
    assert (
        prepare_dataset(digits, Preprocessing.plain(digits.input_shape, digits.normalization)).x_train is digits.x_train
    )


# ---------------------------------------------------------------------------------------------
# Class statistics and the data-free feature step


def test_batchnorm_estimate_tracks_the_measured_feature_mean(digits_checkpoint, digits):
    from edge_unlearn.data import preprocess

    model = load_checkpoint(digits_checkpoint).model
    x = preprocess(digits.x_train, digits.normalization)
    estimate = batchnorm_feature_mean(model, x[:1], samples=256)
    measured = (model.class_stats * model.class_stats_count[:, None]).sum(0) / model.class_stats_count.sum()
    cosine = torch.nn.functional.cosine_similarity(estimate, measured, dim=0)
    assert estimate.shape == measured.shape and float(cosine) > 0.9, float(cosine)


def test_nhle_reports_which_feature_step_ran(digits_checkpoint, digits):
    from edge_unlearn.data import preprocess, take_samples

    model = load_checkpoint(digits_checkpoint).model
    images, labels = take_samples(digits, [3], 16)
    fs = ForgetSet(preprocess(images, digits.normalization), labels, (3,))
    with_stats = forget(model, fs, method="nhle", device="cpu")
    assert {k: with_stats.details[k] for k in ("feature_step", "feature_directions")} == {
        "feature_step": "class_stats",
        "feature_directions": 1,
    }
    bare = load_checkpoint(digits_checkpoint).model
    bare.class_stats_count.zero_()
    free = forget(bare, fs, method="nhle", device="cpu")
    assert {k: free.details[k] for k in ("feature_step", "feature_directions")} == {
        "feature_step": "batchnorm_estimate",
        "feature_directions": 1,
    }
    assert not torch.equal(free.model.edit_layer().weight, bare.edit_layer().weight)
    off = forget(
        bare,
        fs,
        method="nhle",
        device="cpu",
        config=__import__("edge_unlearn.unlearn.nhle", fromlist=["NHLEConfig"]).NHLEConfig(data_free="none"),
    )
    assert off.details["feature_step"].startswith("none") and off.details["feature_directions"] == 0
    assert torch.equal(off.model.edit_layer().weight, bare.edit_layer().weight)


def test_import_with_stats_records_them_and_upscales_digits(tmp_path, digits):
    torch.manual_seed(0)
    net = build_original(ArchSpec("torchvision", "mobilenet_v3_small"), 10).eval()
    torch.save(net.state_dict(), tmp_path / "m.pth")
    out = tmp_path / "m.safetensors"
    summary = import_checkpoint(
        ImportRequest(
            arch="torchvision:mobilenet_v3_small",
            weights=str(tmp_path / "m.pth"),
            output=str(out),
            dataset="digits",
            image_size=(32, 32),
            channels=3,
            preset="none",
            stats_from="digits",
            stats_samples=5,
        )
    )
    assert summary["preprocessing"]["resize"] == [32, 32] and "5 training images per class" in summary["class_stats"]
    assert "at every depth" in summary["class_stats"]
    ck = load_checkpoint(out)
    assert ck.model.has_class_stats and ck.model.has_depth_stats and ck.meta.class_names == digits.class_names
    result = _cli(["evaluate", str(out), "--no-probe", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["per_class_accuracy"]) == 10


def test_an_imported_resnet_with_stats_takes_nhle_s_feature_step(tmp_path, digits):
    """Import records the class statistics, so NHLE's feature step runs on a user's ResNet straight away
    (``feature_step: class_stats``) and edits only the edit layer (the last block's last conv, its BatchNorm)."""
    torch.manual_seed(0)
    net = build_original(ArchSpec("torchvision", "resnet18"), 10).eval()
    torch.save(net.state_dict(), tmp_path / "r.pth")
    out, forgot = tmp_path / "r.safetensors", tmp_path / "f.safetensors"
    import_checkpoint(
        ImportRequest(
            arch="torchvision:resnet18",
            weights=str(tmp_path / "r.pth"),
            output=str(out),
            dataset="digits",
            image_size=(32, 32),
            channels=3,
            preset="none",
            stats_from="digits",
            stats_samples=4,
        )
    )
    result = _cli(
        [
            "forget",
            str(out),
            "--forget",
            "3",
            "--samples",
            "4",
            "-o",
            str(forgot),
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    assert '"feature_step": "class_stats"' in result.output
    before, after = (
        load_checkpoint(out).model.backbone.state_dict(),
        load_checkpoint(forgot).model.backbone.state_dict(),
    )
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("layer4.1.conv2") for k in changed) and all(k.startswith("layer4.1.") for k in changed)


def test_models_lists_what_can_be_imported():
    out = _cli(["models"]).output
    assert "import --arch" in out and "resnet18" in out and "head heads.head" in out
    assert "squeezenet1_0,squeezenet1_1}" in out and "cannot be imported" in out and "timm:NAME" in out
