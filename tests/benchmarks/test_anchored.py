"""The last-block fine-tuning of the research scripts (benchmarks/research/anchored.py, probe_gap.py): the
block recomputed as the backbone does, anchors synthesised from BatchNorm statistics, the fine-tuning."""

from __future__ import annotations

import copy

import pytest
import torch

from edge_unlearn.data import Normalization, preprocess
from edge_unlearn.errors import UsageError
from edge_unlearn.models import build_model


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
    from benchmarks.research.anchored import batch_stat_gap, synthesize_block_inputs

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
    from benchmarks.research.anchored import finetune_block, pooled_block

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
