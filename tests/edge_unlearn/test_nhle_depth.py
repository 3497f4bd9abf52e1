"""NHLE's feature step at depth (issue #15): retargeting onto the nearest retained class, layer by layer,
the class statistics recorded at every depth, and the configuration that selects them."""

from __future__ import annotations

import copy

import pytest
import torch

from edge_unlearn.attacks import mia_entropy, prototype_relearn_attack
from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
from edge_unlearn.data import Normalization, preprocess
from edge_unlearn.errors import UsageError
from edge_unlearn.metrics import evaluate_model
from edge_unlearn.models import build_model, depth_layers
from edge_unlearn.unlearn import ForgetSet, forget, method_config
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
        assert retarget_layer(model, layer, forget_mean, means[1], means[[0, 1, 3]], alpha=1.0)
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


@pytest.mark.parametrize(
    "overrides, count",
    [
        ({}, 1),
        ({"feature_target": "nearest_class", "target_scale": 1.0}, 1),
        ({"feature_target": "nearest_pair", "target_scale": 1.0}, 2),
    ],
)
def test_nearest_targets_defeat_the_prototype_attack_where_the_projection_does_not(overrides, count, original, digits):
    """Digits, class 3: v1's projection leaves the forget features a cluster the 5-sample prototype finds."""
    fs = _forget_set(digits, [3])
    base = evaluate_model(original, digits, [3], probe=False).retain_acc
    old = forget(original, fs, config=NHLEConfig(feature_target="retained_mean"))
    new = forget(original, fs, config=NHLEConfig(**overrides))
    attack_old = prototype_relearn_attack(old.model, digits, [3], lift_mask=True).forget_acc
    attack_new = prototype_relearn_attack(new.model, digits, [3], lift_mask=True).forget_acc
    assert attack_old > 0.2 and attack_new <= 0.05, (attack_old, attack_new)
    after = evaluate_model(new.model, digits, [3], probe=False)
    assert after.forget_acc == 0 and after.forget_acc_unmasked == 0 and base - after.retain_acc <= 0.01
    targets = new.details["target_classes"][3]
    assert len(targets) == count and 3 not in targets and new.details["feature_depth"] == "edit_layer"


def test_the_shrunk_target_leaves_forget_samples_unconfident_where_the_class_mean_makes_them_members(original, digits):
    """Sent onto one retained class's mean the forget samples are predicted confidently (low entropy: "member"
    to the entropy MIA); sent midway between two (v2), or toward the nearest class with a quarter of its
    activations (v3, the default), they are not, as on the retrained model."""
    fs = _forget_set(digits, [3])
    onto = forget(original, fs, config=NHLEConfig(feature_target="nearest_class", target_scale=1.0)).model
    pair = forget(original, fs, config=NHLEConfig(feature_target="nearest_pair", target_scale=1.0)).model
    shrunk = forget(original, fs, config=NHLEConfig()).model
    mia = [mia_entropy(m, digits, [3]) for m in (onto, pair, shrunk)]
    assert mia[0] > 0.5 and mia[1] < 0.2 and mia[2] < 0.2, mia


def test_pair_weight_slides_the_target_from_the_nearest_class_to_the_midpoint(original, digits):
    """pair_weight 0 is nearest_class exactly; 0.25 edits the same layer to a point between 0 and 0.5's."""
    fs = _forget_set(digits, [3])
    x = fs.inputs[fs.labels == 3]

    def features(**overrides):
        model = forget(original, fs, config=NHLEConfig(**overrides)).model
        return model.features(x).mean(0), model

    one, one_model = features(feature_target="nearest_class", target_scale=1.0)
    zero, zero_model = features(feature_target="nearest_pair", pair_weight=0.0, target_scale=1.0)
    quarter, _ = features(feature_target="nearest_pair", pair_weight=0.25, target_scale=1.0)
    half, _ = features(feature_target="nearest_pair", pair_weight=0.5, target_scale=1.0)
    assert torch.equal(one_model.edit_layer().weight, zero_model.edit_layer().weight)
    assert torch.allclose(one, zero)
    # the edit is affine in the target, so the feature mean (before the ReLU it is exact) sits in between
    d_quarter, d_half = (quarter - one).norm(), (half - one).norm()
    assert 0 < d_quarter < d_half, (d_quarter, d_half)


def test_every_layer_edits_each_layer_and_keeps_retained_statistics(with_depth_stats, digits):
    fs = _forget_set(digits, [3])
    result = forget(with_depth_stats, fs, config=NHLEConfig(feature_depth="every_layer"))
    assert result.details["feature_depth"] == "every_layer"
    before_modules = dict(with_depth_stats.backbone.named_modules())
    after_modules = dict(result.model.backbone.named_modules())
    names = [n for n, _ in depth_layers(with_depth_stats.backbone)]
    changed = [n for n in names if not torch.equal(after_modules[n].weight, before_modules[n].weight)]
    # lenet on 1-channel digits: the first conv's input is one channel mean, spanned by the retained means
    assert changed == names[1:] and result.details["feature_directions"] == len(names) - 1
    stats_before = with_depth_stats.depth_stats()
    kept = [c for c in range(10) if c != 3]
    for name in changed:  # each edited layer maps every recorded retained mean exactly as before
        means = stats_before[name][kept]
        with torch.no_grad():
            if isinstance(after_modules[name], torch.nn.Linear):
                old, new = before_modules[name](means), after_modules[name](means)
            else:  # conv + its BatchNorm (the bias shift lives there), centre tap of a constant input
                grid = means[:, :, None, None].expand(-1, -1, 5, 5)
                old = with_depth_stats.backbone[int(name) + 1](before_modules[name](grid))[..., 2, 2]
                new = result.model.backbone[int(name) + 1](after_modules[name](grid))[..., 2, 2]
        torch.testing.assert_close(new, old, rtol=1e-3, atol=1e-3)
    remeasured = copy.deepcopy(result.model)
    remeasured.record_depth_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    targets, edit = result.details["target_classes"][3], names[-1]
    with torch.no_grad():  # the edit layer is affine: its output mean is its output at the input mean
        # the edit layer's target is shrunk by target_scale (v3); earlier layers go to the class mean itself
        target_out = before_modules[edit](NHLEConfig().target_scale * stats_before[edit][targets].mean(0))
        gap_before = float((before_modules[edit](stats_before[edit][3]) - target_out).norm())
        gap_after = float((after_modules[edit](remeasured.depth_stats()[edit][3]) - target_out).norm())
    assert gap_after < 0.25 * gap_before, (gap_before, gap_after)  # the forgotten class moved onto its target
    drop = (
        evaluate_model(with_depth_stats, digits, [3], probe=False).retain_acc
        - evaluate_model(result.model, digits, [3], probe=False).retain_acc
    )
    assert drop <= 0.02, drop
    assert not bool(result.model.depth_stats()[edit][3].any())  # the forgotten class's statistics are erased


def test_every_layer_without_depth_statistics_falls_back_to_the_edit_layer(original, digits):
    assert original.has_depth_stats  # `train` records them ...
    old = _without_depth_stats(original)  # ... a checkpoint from before it did has none
    assert not old.has_depth_stats and old.has_class_stats
    result = forget(old, _forget_set(digits, [3]), config=NHLEConfig(feature_depth="every_layer"))
    assert result.details["feature_depth"] == "edit_layer" and result.details["feature_directions"] == 1


def test_depth_statistics_survive_a_checkpoint_and_old_checkpoints_still_load(
    with_depth_stats, digits_checkpoint, tmp_path
):
    meta = load_checkpoint(digits_checkpoint).meta
    path = tmp_path / "with_depth.safetensors"
    save_checkpoint(path, with_depth_stats, meta)
    loaded = load_checkpoint(path).model
    assert loaded.has_depth_stats and set(loaded.depth_stats()) == {n for n, _ in depth_layers(loaded.backbone)}
    for name, value in with_depth_stats.depth_stats().items():
        assert torch.equal(loaded.depth_stats()[name], value)
    old_path = tmp_path / "old.safetensors"
    save_checkpoint(old_path, _without_depth_stats(with_depth_stats), meta)
    old = load_checkpoint(old_path).model  # written without them
    assert not old.has_depth_stats and old.depth_stats() == {} and old.has_class_stats


def test_forget_variance_metric_changes_the_edit_but_keeps_retained_means(original, digits):
    fs = _forget_set(digits, [3])
    plain = forget(original, fs, config=NHLEConfig())
    weighted = forget(original, fs, config=NHLEConfig(feature_metric="forget_variance"))
    assert not torch.allclose(plain.model.edit_layer().weight, weighted.model.edit_layer().weight)
    layer, means = weighted.model.edit_layer(), original.class_stats[[c for c in range(10) if c != 3]]
    with torch.no_grad():
        torch.testing.assert_close(layer(means), original.edit_layer()(means), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"feature_target": "farthest"}, "feature_target"),
        ({"feature_depth": "some_layers"}, "feature_depth"),
        ({"feature_metric": "cosine"}, "feature_metric"),
        ({"pair_weight": 0.6}, "pair_weight"),
        ({"pair_weight": -0.1}, "pair_weight"),
        ({"target_scale": 0.0}, "target_scale"),
        ({"target_scale": 1.5}, "target_scale"),
        ({"version": 1}, "version"),
    ],
)
def test_bad_feature_parameters_are_one_clear_error(overrides, needle):
    with pytest.raises(UsageError, match=needle):
        method_config("nhle", overrides)


def test_config_record_is_versioned():
    assert NHLEConfig().version == 3 and method_config("nhle", {"feature_depth": "every_layer"}).version == 3


@pytest.mark.parametrize("arch", ["cifar_resnet18", "resnet18"])
def test_probe_gap_recomputes_the_last_block_as_the_backbone_does(arch):
    """benchmarks/research/probe_gap.py simulates edits of the last BasicBlock on cached activations: its recomputed
    output must be the backbone's, unedited, with conv2 / bn2 edited, and with the skip path recomputed."""
    from benchmarks.research.probe_gap import block_activations, block_output, last_basic_block

    torch.manual_seed(0)
    model = build_model(arch, 10, (3, 32, 32)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong running mean or variance shows
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    block = last_basic_block(model)
    act = block_activations(model, block, images, norm)
    with torch.no_grad():
        expected = model.features(preprocess(images, norm))
        torch.testing.assert_close(block_output(block, act), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(block_output(block, act, recompute_conv1=True), expected, atol=1e-4, rtol=1e-4)
        weight = block.conv2.weight + 0.05 * torch.randn_like(block.conv2.weight)
        mean = block.bn2.running_mean + 0.3
        simulated = block_output(block, act, weight, mean)
        block.conv2.weight.copy_(weight)
        block.bn2.running_mean.copy_(mean)
        edited = model.features(preprocess(images, norm))
    assert not torch.allclose(simulated, expected, atol=1e-3)
    torch.testing.assert_close(simulated, edited, atol=1e-4, rtol=1e-4)


def test_probe_gap_refuses_a_model_without_a_last_basic_block():
    from benchmarks.research.probe_gap import last_basic_block

    with pytest.raises(UsageError, match="BasicBlock"):
        last_basic_block(build_model("lenet", 10, (1, 28, 28)))
    with pytest.raises(UsageError, match="BasicBlock"):  # a ResNet, but its last block is a Bottleneck
        last_basic_block(build_model("resnet50", 10, (3, 32, 32)))


def _block_with_statistics(seed: int = 0):
    """A torchvision BasicBlock (the class ResNet-18's last block is; 32 channels to stay fast) with
    non-trivial BatchNorm statistics, a confident linear head over 4 classes, and post-ReLU block inputs."""
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(seed)
    block = BasicBlock(32, 32).eval()
    head = torch.nn.Linear(32, 4)
    inputs = torch.relu(torch.randn(24, 32, 4, 4) + 0.3)
    with torch.no_grad():  # running statistics of these inputs, as training would have recorded them
        h = block.conv1(inputs)
        block.bn1.running_mean.copy_(h.mean((0, 2, 3)))
        block.bn1.running_var.copy_(h.var((0, 2, 3)))
        g = block.conv2(torch.relu(block.bn1(h)))
        block.bn2.running_mean.copy_(g.mean((0, 2, 3)))
        block.bn2.running_var.copy_(g.var((0, 2, 3)))
    return head, block, inputs


def test_synthesised_block_inputs_match_batchnorm_statistics_and_the_head():
    """Retention anchors without retained data (NHLE's backbone step, probe_gap): the block's BatchNorm batch
    statistics move toward the running ones and the head calls each anchor its class; the block is left as it was."""
    from edge_unlearn.unlearn.anchored import batch_stat_gap, synthesize_block_inputs

    head, block, inputs = _block_with_statistics()
    before = copy.deepcopy(block.state_dict())
    w, b = 5 * head.weight.detach(), head.bias.detach()
    means = torch.stack([inputs[i::4].mean((0, 2, 3)) for i in range(4)])

    def gap(z):
        with torch.no_grad():
            h = block.conv1(z)
            return float(
                batch_stat_gap(h, block.bn1) + batch_stat_gap(block.conv2(torch.relu(block.bn1(h))), block.bn2)
            )

    start, labels0 = synthesize_block_inputs(block, w, b, means, [0, 2, 3], (4, 4), per_class=8, steps=0)
    anchors, labels = synthesize_block_inputs(block, w, b, means, [0, 2, 3], (4, 4), per_class=8, steps=100)
    assert (
        anchors.shape == (24, 32, 4, 4) and torch.equal(labels, labels0) and sorted(set(labels.tolist())) == [0, 2, 3]
    )
    assert (anchors >= 0).all()
    assert gap(anchors) < 0.5 * gap(start)
    with torch.no_grad():
        agree = float(((block(anchors).mean((2, 3)) @ w.T + b).argmax(1) == labels).float().mean())
    assert agree >= 0.9
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    assert all(p.requires_grad for p in block.parameters())


def test_finetune_last_block_forgets_on_a_copy_and_anchors_hold_retained_features():
    from edge_unlearn.unlearn.anchored import finetune_block, pooled_block

    head, block, inputs = _block_with_statistics(1)
    w, b = 5 * head.weight.detach(), head.bias.detach()  # a confident head, as a trained one is
    forget_inputs, anchors = inputs[:8], inputs[8:]
    with torch.no_grad():
        cls = int((pooled_block(block, forget_inputs) @ w.T + b).argmax(1).mode().values)
    before = copy.deepcopy(block.state_dict())

    def forgotten_probability(blk):
        with torch.no_grad():
            return float(torch.softmax(pooled_block(blk, forget_inputs) @ w.T + b, 1)[:, cls].mean())

    def anchor_shift(blk):
        with torch.no_grad():
            ref = pooled_block(block, anchors)
            return float((pooled_block(blk, anchors) - ref).norm() / ref.norm())

    free = finetune_block(block, forget_inputs, w, b, [cls], None, steps=30, lr=3e-3)
    held = finetune_block(block, forget_inputs, w, b, [cls], anchors, steps=30, lr=3e-3, anchor_weight=100.0)
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    assert forgotten_probability(free) < 0.5 * forgotten_probability(block)
    assert forgotten_probability(held) < forgotten_probability(block)
    assert anchor_shift(held) < 0.5 * anchor_shift(free)
    labels = torch.tensor([c for c in range(4) if c != cls] * 6)[: len(anchors)]
    adversarial = finetune_block(
        block, forget_inputs, w, b, [cls], anchors, "adversarial", steps=12, lr=3e-3, anchor_labels=labels
    )
    assert any(not torch.equal(p, q) for p, q in zip(adversarial.parameters(), block.parameters()))
    with pytest.raises(UsageError, match="labelled anchors"):
        finetune_block(block, forget_inputs, w, b, [cls], None, "adversarial")
    # prototype: each forget sample's feature goes to the anchors' mean feature of the retained class the head
    # ranks first for it, so it ends nearer that prototype than the block left it
    with torch.no_grad():
        ref = pooled_block(block, anchors)
        prototypes = torch.stack(
            [ref[labels == c].mean(0) if (labels == c).any() else torch.zeros(ref.shape[1]) for c in range(4)]
        )
        logits = pooled_block(block, forget_inputs) @ w.T + b
        logits[:, cls] = float("-inf")
        goal = prototypes[logits.argmax(1)]

    def distance(blk):
        with torch.no_grad():
            return float((pooled_block(blk, forget_inputs) - goal).norm(dim=1).mean())

    towards = finetune_block(
        block, forget_inputs, w, b, [cls], anchors, "prototype", steps=30, lr=3e-3, anchor_labels=labels
    )
    nhle_held = finetune_block(block, forget_inputs, w, b, [cls], anchors, steps=30, lr=3e-3)
    assert distance(towards) < 0.8 * distance(block) and distance(towards) < 0.8 * distance(nhle_held)
    with pytest.raises(UsageError, match="prototype objective needs labelled anchors"):
        finetune_block(block, forget_inputs, w, b, [cls], anchors, "prototype")


def test_backbone_step_fine_tunes_only_the_last_block_and_still_forgets():
    """``backbone_step="last_block"`` (tiny settings for speed): only layer4's last block (and the head's
    forgotten rows) change, the class is forgotten with the mask lifted, and the run says what it did."""
    torch.manual_seed(0)
    model = build_model("cifar_resnet18", 4, (3, 32, 32)).eval()
    images = torch.rand(64, 3, 32, 32)
    labels = torch.arange(4).repeat(16)
    model.record_class_stats(images, labels)
    model.record_depth_stats(images, labels)
    fs = ForgetSet(images[labels == 2][:8], labels[labels == 2][:8], (2,))
    config = {
        "backbone_step": "last_block",
        "anchors_per_class": 2,
        "anchor_steps": 5,
        "backbone_steps": 3,
        "backbone_lr": 1e-2,
    }
    result = forget(model, fs, method="nhle", config=method_config("nhle", config))
    assert result.details["backbone_step"] == {"block": "layer4.1", "anchors": 6, "objective": "nhle"}
    before, after = model.backbone.state_dict(), result.model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("layer4.1.conv1") for k in changed)
    assert changed <= {k for k in before if k.startswith("layer4.1.")}
    with torch.no_grad():
        assert (result.model.logits(fs.inputs, masked=False).argmax(1) != 2).all()
    # conv2's input moved with the block: its recorded retained means (the edit layer's class statistics) moved
    # with it, conv1's (the block's input) did not, and the forgotten class's are erased
    kept = [0, 1, 3]
    stats = result.model.depth_stats()
    assert not torch.allclose(stats["layer4.1.conv2"][kept], model.depth_stats()["layer4.1.conv2"][kept])
    assert torch.equal(stats["layer4.1.conv1"][kept], model.depth_stats()["layer4.1.conv1"][kept])
    assert torch.allclose(result.model.class_stats[kept], stats["layer4.1.conv2"][kept], atol=1e-6)
    assert not result.model.class_stats[2].any() and not stats["layer4.1.conv2"][2].any()


def test_anchor_shifts_update_recorded_means_exactly_when_the_anchors_are_the_data():
    """The shift applied to the statistics inside a fine-tuned block is the change of each class's mean input
    over its anchors: with the recorded images' own block inputs as anchors, recorded mean + shift is the mean
    re-measured on the tuned block."""
    from edge_unlearn.unlearn.nhle import anchored_input_shifts

    torch.manual_seed(0)
    model = build_model("cifar_resnet18", 3, (3, 16, 16)).eval()
    images, labels = torch.rand(24, 3, 16, 16), torch.arange(3).repeat(8)
    model.record_depth_stats(images, labels)
    block = model.backbone.layer4[1]
    seen = []
    handle = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model.backbone(images)
    handle.remove()
    tuned = copy.deepcopy(block)
    with torch.no_grad():
        tuned.conv1.weight.mul_(1.5).add_(0.01)
    shifts = anchored_input_shifts(block, tuned, seen[0], labels, [0, 1, 2])
    assert set(shifts) == {"conv2"}  # conv1 sees the block's input, which did not change
    remeasured = copy.deepcopy(model)
    remeasured.backbone.layer4[1] = tuned
    remeasured.record_depth_stats(images, labels)
    torch.testing.assert_close(
        model.depth_stats()["layer4.1.conv2"] + shifts["conv2"],
        remeasured.depth_stats()["layer4.1.conv2"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_backbone_step_refuses_a_model_it_cannot_serve(original, digits):
    with pytest.raises(UsageError, match="ResNet"):
        forget(
            original,
            _forget_set(digits, [3], 4),
            method="nhle",
            config=method_config("nhle", {"backbone_step": "last_block"}),
        )
    model = build_model("cifar_resnet18", 4, (3, 32, 32)).eval()
    fs = ForgetSet(torch.rand(4, 3, 32, 32), torch.full((4,), 1), (1,))
    with pytest.raises(UsageError, match="depth"):
        forget(model, fs, method="nhle", config=method_config("nhle", {"backbone_step": "last_block"}))
