"""NHLE's feature step (retargeting onto the nearest retained class), its head step (versions 5–6: the model's
own answer mixed over the retained classes), the class statistics recorded at every depth, and the versioned
configuration (old records migrated)."""

from __future__ import annotations

import copy

import pytest
import torch

from edge_unlearn.attacks import mia_entropy, prototype_relearn_attack
from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
from edge_unlearn.data import preprocess
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import evaluate_model
from edge_unlearn.models import HEAD_INPUT, build_model, depth_layers
from edge_unlearn.unlearn import forget, method_config
from edge_unlearn.unlearn.nhle import NHLEConfig, _layer_input, retarget_layer
from tests.conftest import forget_set


def _forget_set(data, classes, n=32):
    return forget_set(data, classes, n)


@pytest.fixture(scope="module")
def original(digits_checkpoint):
    return load_checkpoint(digits_checkpoint).model


def _without_depth_stats(model):
    """The model as a checkpoint from before depth statistics holds it (``train`` now records them)."""
    bare = copy.deepcopy(model)
    for key in [k for k in bare._buffers if k.startswith(("depth_stats__", "depth_stats_count"))]:
        del bare._buffers[key]
    return bare


@pytest.fixture(scope="module")
def with_depth_stats(original, digits):
    model = copy.deepcopy(original)
    model.record_depth_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    return model


@pytest.mark.parametrize("arch, shape", [("lenet", (1, 8, 8)), ("resnet18", (1, 16, 16))])
def test_retarget_layer_sends_forget_mean_to_target_and_keeps_every_retained_mean(arch, shape):
    """Linear (lenet) and conv with its bias shift folded into the next BatchNorm (resnet)."""
    torch.manual_seed(0)
    model = build_model(arch, 4, shape).eval()
    x, y = torch.rand(48, *shape), torch.arange(48) % 4
    x[y == 2] += 1.0
    model.record_class_stats(x, y)
    layer = model.edit_layer()
    means = model.class_stats.float()
    forget_mean = _layer_input(model, layer, x[y == 2]).mean(0)
    bn = None
    if isinstance(layer, torch.nn.Conv2d):
        from edge_unlearn.unlearn.nhle import _following_batchnorm

        bn = _following_batchnorm(model, layer)

    def response(mean):
        inp = mean[None] if isinstance(layer, torch.nn.Linear) else mean[None, :, None, None].expand(1, -1, 5, 5)
        out = layer(inp)
        out = bn(out) if bn is not None else out
        return out[..., 2, 2] if out.dim() == 4 else out  # conv: the centre tap (padding breaks the mean elsewhere)

    with torch.no_grad():
        before = {c: response(means[c]) for c in (0, 1, 3)}
        target_before = response(means[1])
        forget_before = response(forget_mean)
        assert retarget_layer(model, layer, forget_mean, means[1], means[[0, 1, 3]])
        for c in (0, 1, 3):
            torch.testing.assert_close(response(means[c]), before[c], rtol=1e-4, atol=1e-4)
        moved = response(forget_mean)
    torch.testing.assert_close(moved, target_before, rtol=1e-3, atol=1e-3)
    assert float((forget_before - target_before).norm()) > 0.1  # it had somewhere to go


def test_retarget_refuses_a_forget_mean_the_retained_means_already_span(original):
    model = copy.deepcopy(original)
    means = model.class_stats.float()
    inside = 0.5 * means[0] + 0.5 * means[1]  # an affine combination of retained means
    weight = model.edit_layer().weight.clone()
    assert not retarget_layer(model, model.edit_layer(), inside, means[2], means[[0, 1, 2, 4]])
    assert torch.equal(model.edit_layer().weight, weight)


def test_the_nearest_class_target_defeats_the_prototype_attack_where_the_retained_mean_does_not(original, digits):
    """Digits, class 3: sending the forget mean to the retained classes' mean (version 1's idea) leaves the forget
    features a cluster the 5-sample prototype finds; the nearest class's scaled mean (the default) does not."""
    import edge_unlearn.unlearn.nhle as nhle

    fs = _forget_set(digits, [3])
    base = evaluate_model(original, digits, [3], probe=False).retain_acc
    new = forget(original, fs, config=NHLEConfig())
    old = copy.deepcopy(original)
    keep = torch.ones(10, dtype=torch.bool)
    keep[3] = False
    act = _layer_input(old, old.edit_layer(), fs.inputs).mean(0)
    with torch.no_grad():
        nhle.retarget_layer(old, old.edit_layer(), act, old.class_stats[keep].float().mean(0), old.class_stats[keep])
    old.mask_classes([3])
    attack_old = prototype_relearn_attack(old, digits, [3], lift_mask=True).forget_acc
    attack_new = prototype_relearn_attack(new.model, digits, [3], lift_mask=True).forget_acc
    assert attack_old > 0.2 and attack_new <= 0.05, (attack_old, attack_new)
    after = evaluate_model(new.model, digits, [3], probe=False)
    assert after.forget_acc == 0 and after.forget_acc_unmasked == 0 and base - after.retain_acc <= 0.01
    target = new.details["target_classes"][3]
    assert target != 3 and new.details["feature_step"] == "class_stats"


def test_target_scale_sets_the_confidence_of_the_answers_on_forget_samples(original, digits):
    """Onto the nearest class's mean (scale 1) the forget samples are answered confidently, further toward the
    origin less so: the scale moves the entropy of the deployed answers monotonically."""
    from edge_unlearn.output_audit import entropy_of, forget_test_log_softmax

    fs = _forget_set(digits, [3])
    entropies = []
    for scale in (1.0, 0.5, 0.25):
        model = forget(original, fs, config=NHLEConfig(target_scale=scale)).model
        entropies.append(float(entropy_of(forget_test_log_softmax(model, digits, [3])).mean()))
    assert entropies[0] < entropies[1] < entropies[2], entropies
    onto = forget(original, fs, config=NHLEConfig(target_scale=1.0)).model
    assert mia_entropy(onto, digits, [3]) > mia_entropy(forget(original, fs).model, digits, [3])


def test_entropy_ratio_finds_the_scale_that_gives_that_share_of_the_masked_originals_entropy(original, digits):
    """The per-request rule: the chosen scale puts the forget samples' mean entropy over the retained classes at
    the asked share of the masked original's (to the bisection's precision), a smaller share means a larger
    scale, and the retained classes' recorded means still map exactly as before (retained accuracy holds)."""
    from edge_unlearn.unlearn.nhle import _retained_entropy

    fs = _forget_set(digits, [3])
    masked = torch.zeros(10, dtype=torch.bool)
    masked[3] = True
    before = _retained_entropy(original.eval(), fs.inputs, masked)
    scales = {}
    for ratio in (0.6, 0.9):
        result = forget(copy.deepcopy(original), fs, config=NHLEConfig(entropy_ratio=ratio))
        scales[ratio] = result.details["target_scales"][3]
        after = _retained_entropy(result.model.eval(), fs.inputs, masked)
        assert 0.05 < scales[ratio] < 2.0 and after == pytest.approx(ratio * before, rel=0.02), (ratio, after, before)
        report = evaluate_model(result.model, digits, [3], probe=False)
        assert report.forget_acc == 0 and report.forget_acc_unmasked == 0
    assert scales[0.6] > scales[0.9]
    assert "target_scales" not in forget(copy.deepcopy(original), fs).details  # the fixed scale by default


def test_head_input_statistics_are_the_class_means_of_the_penultimate_features(with_depth_stats, digits):
    """The head's recorded means are each class's mean penultimate features (what the head step keeps exact)."""
    x = preprocess(digits.x_train, digits.normalization)
    with torch.no_grad():
        feats = with_depth_stats.eval().features(x)
    means = with_depth_stats.head_input_stats()
    assert means is not None and means.shape == (10, with_depth_stats.feature_dim)
    for c in (0, 3, 9):
        torch.testing.assert_close(means[c], feats[digits.y_train == c].mean(0), rtol=1e-4, atol=1e-5)


def _retained_entropy(model, x, keep):
    with torch.no_grad():
        log_p = torch.log_softmax(model.head(model.features(x))[:, keep], dim=1)
    return float(-(log_p.exp() * log_p).sum(1).mean())


def test_default_head_step_sends_the_forget_mean_to_the_mixture_at_the_entropy_floor_and_keeps_every_retained_mean(
    with_depth_stats, digits
):
    """Version 6's head step: the forget samples' mean penultimate features get the retained logits of
    ``scale`` × the retained classes' recorded means mixed by the model's own answer on the forget samples, the
    scale (≤ head_scale) the largest at which the answer's mean entropy on them is not below head_entropy_ratio
    × the masked original's; every retained class's recorded mean keeps its logits; forgetting and retained
    accuracy hold."""
    fs = _forget_set(digits, [3])
    means = with_depth_stats.head_input_stats().clone()
    keep = torch.ones(10, dtype=torch.bool)
    keep[3] = False
    plain = forget(copy.deepcopy(with_depth_stats), fs, config=NHLEConfig(head_target="none")).model.eval()
    result = forget(copy.deepcopy(with_depth_stats), fs)
    model = result.model.eval()
    assert result.details["head_step"] == "class_stats"
    weights, scale = result.details["head_target_weights"][3], result.details["head_scales"][3]
    assert sorted(weights) == [c for c in range(10) if c != 3] and abs(sum(weights.values()) - 1) < 1e-3
    assert 0 < scale <= NHLEConfig().head_scale
    with torch.no_grad():
        feats = plain.features(fs.inputs)
        answer = torch.softmax(plain.head(feats)[:, keep], dim=1).mean(0)
        assert [round(float(w), 4) for w in answer] == [weights[c] for c in range(10) if c != 3]
        torch.testing.assert_close(
            model.head(means[keep])[:, keep], plain.head(means[keep])[:, keep], rtol=1e-3, atol=1e-3
        )
        got = model.head(feats.mean(0))[keep]
        want = plain.head(scale * (answer @ means[keep]))[keep]
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
        assert not torch.allclose(plain.head(feats.mean(0))[keep], want, atol=1e-2)  # the step changed something
    floor = NHLEConfig().head_entropy_ratio * _retained_entropy(with_depth_stats.eval(), fs.inputs, keep)
    entropy = _retained_entropy(model, fs.inputs, keep)
    assert entropy >= floor - 0.02
    assert scale == NHLEConfig().head_scale or entropy == pytest.approx(floor, abs=0.02), (scale, entropy, floor)
    after = evaluate_model(model, digits, [3], probe=False)
    base = evaluate_model(with_depth_stats, digits, [3], probe=False)
    assert after.forget_acc == 0 and after.forget_acc_unmasked == 0 and base.retain_acc - after.retain_acc <= 0.01


def test_head_entropy_ratio_sets_how_sure_the_answer_becomes_and_version_5_keeps_it_as_before(with_depth_stats, digits):
    """A smaller head_entropy_ratio lets the head step go further out (a surer answer, never past head_scale);
    ``--set version=5`` (method_config's migration) runs version 5's limit: no surer than before the step."""
    fs = _forget_set(digits, [3])
    keep = torch.ones(10, dtype=torch.bool)
    keep[3] = False
    plain = forget(copy.deepcopy(with_depth_stats), fs, config=NHLEConfig(head_target="none")).model.eval()
    runs = {
        ratio: forget(copy.deepcopy(with_depth_stats), fs, config=NHLEConfig(head_scale=1.0, head_entropy_ratio=ratio))
        for ratio in (0.5, 1.0)
    }
    scales = {ratio: r.details["head_scales"][3] for ratio, r in runs.items()}
    entropies = {ratio: _retained_entropy(r.model.eval(), fs.inputs, keep) for ratio, r in runs.items()}
    assert scales[0.5] > scales[1.0] and entropies[0.5] < entropies[1.0], (scales, entropies)
    v5 = method_config("nhle", {"version": 5})
    assert v5.head_entropy_ratio is None and v5.version == 6
    old = forget(copy.deepcopy(with_depth_stats), fs, config=v5)
    before = _retained_entropy(plain, fs.inputs, keep)
    assert _retained_entropy(old.model.eval(), fs.inputs, keep) == pytest.approx(before, abs=0.02)


def test_head_step_toward_the_nearest_class_keeps_every_retained_mean(with_depth_stats, digits):
    """``head_target=nearest`` (version 4's opt-in): the forget samples' mean penultimate features get the
    retained logits of the scaled nearest class mean, every retained class's recorded mean keeps its logits (to
    float precision), the class's statistics are erased, and without head statistics the step says why it did
    not run."""
    fs = _forget_set(digits, [3])
    means = with_depth_stats.head_input_stats().clone()
    keep = torch.ones(10, dtype=torch.bool)
    keep[3] = False
    plain = forget(copy.deepcopy(with_depth_stats), fs, config=NHLEConfig(head_target="none")).model
    result = forget(copy.deepcopy(with_depth_stats), fs, config=NHLEConfig(head_scale=0.8, head_target="nearest"))
    model = result.model.eval()
    assert result.details["head_step"] == "class_stats"
    target = result.details["head_target_classes"][3]
    assert target != 3 and keep[target]
    with torch.no_grad():
        # every retained class's recorded mean: the same retained logits as without the head step
        torch.testing.assert_close(
            model.head(means[keep])[:, keep], plain.head(means[keep])[:, keep], rtol=1e-3, atol=1e-3
        )
        forget_mean = model.features(fs.inputs).mean(0)
        got = model.head(forget_mean)[keep]
        want = plain.head(0.8 * means[target])[keep]
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        assert not torch.allclose(plain.head(forget_mean)[keep], want, atol=1e-2)  # the step changed something
    assert model.head_input_stats() is None or float(model.depth_stats()[HEAD_INPUT][3].abs().sum()) == 0
    after = evaluate_model(model, digits, [3], probe=False)
    base = evaluate_model(with_depth_stats, digits, [3], probe=False)
    assert after.forget_acc == 0 and after.forget_acc_unmasked == 0 and base.retain_acc - after.retain_acc <= 0.01
    bare = forget(_without_depth_stats(with_depth_stats), fs)
    assert bare.details["head_step"].startswith("none")


def test_depth_statistics_survive_a_checkpoint_and_old_checkpoints_still_load(
    with_depth_stats, digits_checkpoint, tmp_path
):
    meta = load_checkpoint(digits_checkpoint).meta
    path = tmp_path / "with_depth.safetensors"
    save_checkpoint(path, with_depth_stats, meta)
    loaded = load_checkpoint(path).model
    assert loaded.has_depth_stats
    assert set(loaded.depth_stats()) == {n for n, _ in depth_layers(loaded.backbone)} | {HEAD_INPUT}
    for name, value in with_depth_stats.depth_stats().items():
        assert torch.equal(loaded.depth_stats()[name], value)
    old_path = tmp_path / "old.safetensors"
    save_checkpoint(old_path, _without_depth_stats(with_depth_stats), meta)
    old = load_checkpoint(old_path).model  # written without them
    assert not old.has_depth_stats and old.depth_stats() == {} and old.has_class_stats
    assert old.head_input_stats() is None


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"target_scale": 0.0}, "target_scale"),
        ({"target_scale": 1.5}, "target_scale"),
        ({"entropy_ratio": 0.0}, "entropy_ratio"),
        ({"entropy_ratio": 3.0}, "entropy_ratio"),
        ({"head_scale": 0.0}, "head_scale"),
        ({"head_scale": 1.5}, "head_scale"),
        ({"head_target": "farthest"}, "head_target"),
        ({"head_entropy_ratio": 0.0}, "head_entropy_ratio"),
        ({"head_entropy_ratio": 3.0}, "head_entropy_ratio"),
        ({"version": 9}, "unknown"),
        ({"data_free": "magic"}, "data_free"),
        ({"steps": -1}, "steps"),
        ({"feature_target": "nearest_pair"}, "feature_target"),
    ],
)
def test_bad_feature_parameters_are_one_clear_error(overrides, needle):
    with pytest.raises(UsageError, match=needle):
        method_config("nhle", overrides)


def test_config_record_is_versioned_and_old_records_migrate():
    assert NHLEConfig().version == 6 and NHLEConfig().to_json()["version"] == 6
    assert NHLEConfig.from_json(NHLEConfig(target_scale=0.5).to_json()) == NHLEConfig(target_scale=0.5)
    legacy = NHLEConfig(head_entropy_ratio=None)
    assert NHLEConfig.from_json(legacy.to_json()) == legacy
    v5 = {**NHLEConfig().to_json(), "version": 5}
    del v5["head_entropy_ratio"]
    assert NHLEConfig.from_json(v5) == legacy  # version 5: no surer than before the head step
    v4 = {"version": 4, "steps": 20, "lr": 0.05, "target_scale": 0.35, "data_free": "batchnorm", "entropy_ratio": None}
    assert NHLEConfig.from_json(v4) == NHLEConfig(head_target="none", head_entropy_ratio=None)  # no head step
    assert NHLEConfig.from_json({**v4, "head_scale": None}) == NHLEConfig(head_target="none", head_entropy_ratio=None)
    assert NHLEConfig.from_json({**v4, "head_scale": 0.7}) == NHLEConfig(
        head_scale=0.7, head_target="nearest", head_entropy_ratio=None
    )
    v3 = {"version": 3, "steps": 10, "lr": 0.1, "feature_target": "nearest_class", "scope": "forgotten_rows"}
    assert NHLEConfig.from_json(v3) == NHLEConfig(
        steps=10, lr=0.1, target_scale=0.25, head_target="none", head_entropy_ratio=None
    )
    for record, needle in (
        ({"version": 1}, "retained_mean"),
        ({"version": 2}, "nearest_pair"),
        ({"version": 3, "scope": "head"}, "scope"),
        ({"version": 9}, "unknown"),
    ):
        with pytest.raises(UsageError, match=needle):
            NHLEConfig.from_json(record)
