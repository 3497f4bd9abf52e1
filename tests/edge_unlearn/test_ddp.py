"""Multi-process training (issue #12): `torchrun --nproc-per-node 2` (gloo, CPU) runs `train` as
DistributedDataParallel; the first process alone writes the checkpoint and the training state, and the
recipe record is the single-process one."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import torch

from edge_unlearn.checkpoint import load_checkpoint
from edge_unlearn.data import load_dataset, preprocess
from edge_unlearn.training import load_train_state
from tests.conftest import invoke_cli

OPTIONS = ["--dataset", "digits", "--epochs", "1", "--min-steps", "4", "--device", "cpu", "--seed", "3"]


def test_torchrun_two_processes_train_one_checkpoint_with_the_single_process_recipe(tmp_path):
    out, state = tmp_path / "ddp.safetensors", tmp_path / "ddp.safetensors.state.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "edge_unlearn.cli",
        "train",
        *OPTIONS,
        "--save-every",
        "4",
        "-o",
        str(out),
        "--json",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one JSON document: only the first process reports
    assert summary["processes"] == 2 and summary["rank"] == 0 and summary["steps"] == 10
    # 1257 images over 2 processes of 64 (global batch 128): 10 steps, a state at steps 4 and 8
    ck = load_checkpoint(out)
    assert ck.sha256 == summary["sha256"] and ck.model.has_class_stats
    assert int(ck.model.class_stats_count.sum()) == 1257  # all-reduced over both shards, each image once
    digits = load_dataset("digits")  # the means one process measures on every image with the saved model
    whole = copy.deepcopy(ck.model)
    whole.record_depth_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    whole.record_class_stats(preprocess(digits.x_train, digits.normalization), digits.y_train)
    torch.testing.assert_close(ck.model.class_stats, whole.class_stats, rtol=1e-4, atol=1e-5)
    assert ck.model.has_depth_stats and torch.equal(ck.model.depth_stats_count, whole.depth_stats_count)
    for name, means in whole.depth_stats().items():
        torch.testing.assert_close(ck.model.depth_stats()[name], means, rtol=1e-4, atol=1e-5)
    saved = load_train_state(state)
    assert saved["step"] == 8 and len(saved["rng"]) == 2 and saved["identity"]["world_size"] == 2
    assert not torch.equal(saved["rng"][0]["augment"], saved["rng"][1]["augment"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, state.name]  # no stray temporary files

    single = tmp_path / "single" / "one.safetensors"
    single.parent.mkdir()
    result = invoke_cli(["train", *OPTIONS, "-o", single, "--json"])
    assert result.exit_code == 0, result.output
    assert ck.meta.train_recipe == load_checkpoint(single).meta.train_recipe == json.loads(result.output)["recipe"]
    assert json.loads(result.output)["processes"] == 1
