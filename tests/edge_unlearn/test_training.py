"""The training recipe (issue #12): augmentation chosen per dataset and recorded, schedules, label smoothing,
AMP refused on CPU, resume giving the uninterrupted run's weights, streaming class statistics, and `retrain`
repeating the recorded recipe."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from edge_unlearn.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from edge_unlearn.data import preprocess
from edge_unlearn.errors import CheckpointError, UsageError
from edge_unlearn.training import (
    Processes,
    TrainConfig,
    WarmupCosine,
    augment_batch,
    load_train_state,
    record_training_stats,
    train_model,
)
from tests.conftest import invoke_cli, one_line_error, one_thread

# A tiny run on digits: 1257 training images, 10 steps of 128 an epoch; min_steps 14 -> 2 epochs, 20 steps.
TINY = dict(epochs=1, min_steps=14, batch_size=128, lr=5e-3, device="cpu")


def test_auto_augmentation_follows_the_images_and_is_recorded_resolved():
    colour = TrainConfig().resolved((3, 32, 32))
    assert (colour.augment, colour.crop_padding) == ("crop-flip", 4)
    assert TrainConfig().resolved((3, 224, 224)).crop_padding == 28  # in proportion to the size
    grey = TrainConfig().resolved((1, 28, 28))
    assert (grey.augment, grey.crop_padding) == ("none", None)  # digits/fashion stay as they were
    assert TrainConfig(augment="crop").resolved((1, 8, 8)).crop_padding == 1
    assert TrainConfig(augment="crop-flip", crop_padding=2).resolved((3, 32, 32)).crop_padding == 2
    assert colour.to_json()["augment"] == "crop-flip" and TrainConfig.from_json(colour.to_json()) == colour


def test_a_record_from_before_the_recipe_version_means_the_plain_recipe():
    old = {
        "epochs": 3,
        "min_steps": 500,
        "batch_size": 128,
        "lr": 2e-3,
        "weight_decay": 5e-4,
        "seed": 0,
        "device": "auto",
    }
    config = TrainConfig.from_json(old).resolved((3, 32, 32))
    assert (config.augment, config.schedule, config.label_smoothing, config.amp) == ("none", "onecycle", 0.0, "off")
    assert TrainConfig.from_json({**old, "version": 2}).augment == "auto"


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("augment", "mixup", "--augment"),
        ("schedule", "step", "--schedule"),
        ("amp", "fp8", "--amp"),
        ("label_smoothing", -0.1, "--label-smoothing"),
        ("label_smoothing", 1.0, "--label-smoothing"),
        ("crop_padding", -1, "crop_padding"),
        ("version", 99, "upgrade"),
    ],
)
def test_bad_recipe_values_are_refused(field, value, needle):
    with pytest.raises(UsageError, match=needle):
        TrainConfig(**{field: value})


def test_crop_and_flip_take_windows_of_the_padded_image():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    config = TrainConfig(augment="crop-flip").resolved((3, 8, 8))
    out = augment_batch(images, config, torch.Generator().manual_seed(1))
    assert torch.equal(out, augment_batch(images, config, torch.Generator().manual_seed(1)))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    flipped = 0
    for image, got in zip(padded, out):
        windows = [image[:, t : t + 8, s : s + 8] for t in range(3) for s in range(3)]
        plain = any(torch.equal(got, w) for w in windows)
        mirrored = any(torch.equal(got, w.flip(-1)) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 54  # about half are flipped
    assert torch.equal(augment_batch(images, TrainConfig(augment="none"), torch.Generator()), images)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factor = WarmupCosine(total=100, warmup=5)
    assert [round(factor(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert factor(5) == 1.0 and math.isclose(factor(52.5), 0.5) and factor(100) == 0.0
    assert all(factor(s) >= factor(s + 1) for s in range(5, 100))


def _twin_lenets(digits):
    """Two untrained lenets with the same weights: one records from a whole array, one through training's loader."""
    from edge_unlearn.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet", digits.num_classes, digits.input_shape)
    whole = build_model("lenet", digits.num_classes, digits.input_shape)
    whole.load_state_dict(model.state_dict())
    return model, whole


def test_class_statistics_stream_to_the_same_means(digits):
    model, whole = _twin_lenets(digits)
    whole.record_class_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    record_training_stats(model, digits.split("train"), digits.normalization, Processes(), batch_size=512)
    assert torch.equal(model.class_stats, whole.class_stats) and model.class_stats.abs().sum() > 0
    assert torch.equal(model.class_stats_count, whole.class_stats_count)
    retained = [c for c in range(10) if c != 4]
    record_training_stats(model, digits.split("train", classes=retained), digits.normalization, Processes())
    assert model.class_stats_count[4] == 0 and model.class_stats_count[3] < whole.class_stats_count[3] + 1
    assert torch.equal(model.class_stats[3], whole.class_stats[3])  # the same images of class 3


def test_training_records_the_statistics_at_every_depth_unless_they_are_too_large(digits, monkeypatch):
    """`train` records per-class means at every depth (NHLE's backbone step and every-layer edit need them),
    streamed to the means a whole-array pass gives; past DEPTH_STATS_MAX_FLOATS only the edit layer's."""
    from edge_unlearn import training
    from edge_unlearn.models import build_model

    model, whole = _twin_lenets(digits)
    whole.record_depth_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    record_training_stats(model, digits.split("train"), digits.normalization, Processes(), batch_size=300)
    assert model.has_depth_stats and model.depth_stats().keys() == whole.depth_stats().keys()
    for name, means in whole.depth_stats().items():
        assert torch.allclose(model.depth_stats()[name], means, atol=1e-5) and means.abs().sum() > 0, name
    assert torch.equal(model.depth_stats_count, whole.depth_stats_count)

    monkeypatch.setattr(training, "DEPTH_STATS_MAX_FLOATS", model.depth_stats_size() - 1)
    small = build_model("lenet", digits.num_classes, digits.input_shape)
    record_training_stats(small, digits.split("train"), digits.normalization, Processes())
    assert small.has_class_stats and not small.has_depth_stats


def test_resume_gives_the_weights_of_an_uninterrupted_run(digits, tmp_path):
    # 1257 images / 128 = 10 steps an epoch, 2 epochs; states at steps 7 and 14: the last is mid-epoch 2.
    config = TrainConfig(**TINY, augment="crop-flip", label_smoothing=0.1, schedule="cosine")
    state = tmp_path / "run.state.pt"
    with one_thread():
        straight = train_model("lenet", digits, config, progress=False).model.state_dict()
        saved = train_model("lenet", digits, config, progress=False, save_every=7, state_path=state).model
        assert load_train_state(state)["step"] == 14 and not list(tmp_path.glob("*.tmp*"))
        resumed = train_model("lenet", digits, config, progress=False, resume=state)
    assert resumed.resumed_from_step == 14 and resumed.steps == 20
    for name, tensor in straight.items():
        assert torch.equal(tensor, saved.state_dict()[name]), name  # saving does not disturb the run
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_workers_read_the_same_batches(digits):
    config = TrainConfig(**{**TINY, "min_steps": 4}, augment="crop")
    with one_thread():
        inline = train_model("lenet", digits, config, progress=False).model.state_dict()
        parallel = train_model("lenet", digits, config, progress=False, workers=2).model.state_dict()
    assert all(torch.equal(inline[k], parallel[k]) for k in inline)


def test_resume_refuses_another_training_or_a_damaged_file(digits, tmp_path):
    config = TrainConfig(**{**TINY, "min_steps": 4})
    state = tmp_path / "s.state.pt"
    train_model("lenet", digits, replace(config, min_steps=12), progress=False, save_every=3, state_path=state)
    with pytest.raises(UsageError, match="another training"):
        train_model("lenet", digits, replace(config, lr=1e-3), progress=False, resume=state)
    with pytest.raises(UsageError, match="another training"):
        train_model("resnet18", digits, config, progress=False, resume=state)
    edited = load_train_state(state)
    edited["model"].pop(next(iter(edited["model"])))
    torch.save(edited, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train_model("lenet", digits, replace(config, min_steps=12), progress=False, resume=tmp_path / "edited.pt")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable training-state"):
        load_train_state(damaged)


def test_cli_refuses_bad_recipe_options_in_one_line_and_writes_nothing(digits_checkpoint, tmp_path):
    out = tmp_path / "o.safetensors"
    one_line_error(invoke_cli(["train", "--label-smoothing", "-0.5", "-o", out]), "--label-smoothing")
    one_line_error(invoke_cli(["train", "--augment", "mixup", "-o", out]), "mixup")
    one_line_error(invoke_cli(["train", "--amp", "--device", "cpu", "-o", out]), "--amp bf16", "CUDA")
    garbage = tmp_path / "garbage.state.pt"
    garbage.write_bytes(b"not a zip archive at all")
    one_line_error(invoke_cli(["train", "--resume", garbage, "-o", out]), "not a readable training-state")
    one_line_error(
        invoke_cli(["retrain", digits_checkpoint, "--forget", "1", "--resume", tmp_path / "nope.pt", "-o", out]),
        "no such file",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.state.pt"]


def test_retrain_repeats_the_recorded_recipe(tmp_path):
    original, gold = tmp_path / "o.safetensors", tmp_path / "r.safetensors"
    result = invoke_cli(
        [
            "train",
            "--epochs",
            "1",
            "--min-steps",
            "10",
            "--augment",
            "crop",
            "--schedule",
            "cosine",
            "--label-smoothing",
            "0.05",
            "--device",
            "cpu",
            "-o",
            original,
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    recipe = read_meta(original).train_recipe
    assert recipe == json.loads(result.output)["recipe"]
    assert (recipe["augment"], recipe["crop_padding"], recipe["schedule"], recipe["label_smoothing"]) == (
        "crop",
        1,
        "cosine",
        0.05,
    )
    result = invoke_cli(["retrain", original, "--forget", "2", "-o", gold, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recipe"] == recipe
    assert read_meta(gold).lineage[-1]["params"] == recipe and read_meta(gold).train_recipe == recipe


def test_an_old_checkpoint_retrains_with_the_plain_recipe(digits, tmp_path):
    from edge_unlearn.models import build_model

    old_recipe = {
        "epochs": 1,
        "min_steps": 5,
        "batch_size": 128,
        "lr": 2e-3,
        "weight_decay": 5e-4,
        "seed": 0,
        "device": "cpu",
    }
    model = build_model("lenet", digits.num_classes, digits.input_shape)
    meta = CheckpointMeta(
        "lenet",
        digits.num_classes,
        digits.class_names,
        digits.input_shape,
        digits.normalization,
        "digits",
        train_recipe=old_recipe,
    )
    original = tmp_path / "old.safetensors"
    save_checkpoint(original, model, meta)
    result = invoke_cli(["retrain", original, "--forget", "0", "-o", tmp_path / "r.safetensors", "--json"])
    assert result.exit_code == 0, result.output
    ran = json.loads(result.output)["recipe"]
    assert {k: ran[k] for k in old_recipe} == old_recipe
    assert (ran["augment"], ran["schedule"], ran["label_smoothing"], ran["amp"]) == ("none", "onecycle", 0.0, "off")


def test_cli_choices_match_the_library():
    from edge_unlearn import training
    from edge_unlearn.cli import options as cli

    assert (cli.AUGMENTS, cli.SCHEDULES, cli.AMP_MODES) == (training.AUGMENTS, training.SCHEDULES, training.AMP_MODES)
