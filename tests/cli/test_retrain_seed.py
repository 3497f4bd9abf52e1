"""``retrain --seed``: the training seed of the gold standard (default: the one recorded in the original), so
several retrained models can show the spread between seeds; the seed used is recorded in the checkpoint."""

from __future__ import annotations

import json

import torch

from edge_unlearn.checkpoint import load_checkpoint

from ..conftest import invoke_cli


def test_two_seeds_give_different_weights_and_each_is_recorded(digits_checkpoint, tmp_path):
    original = load_checkpoint(digits_checkpoint)
    recorded = original.meta.train_recipe["seed"]
    paths = {}
    for seed in (None, recorded + 1):
        out = tmp_path / f"r{seed}.safetensors"
        args = ["retrain", digits_checkpoint, "--forget", "3", "-o", out, "--json"]
        result = invoke_cli(args + ([] if seed is None else ["--seed", seed]))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["recipe"]["seed"] == (recorded if seed is None else seed)
        paths[seed] = out
    default, other = (load_checkpoint(paths[s]) for s in (None, recorded + 1))
    assert default.meta.train_recipe["seed"] == recorded
    assert other.meta.train_recipe["seed"] == recorded + 1
    # the rest of the recipe is the original's
    assert {k: v for k, v in other.meta.train_recipe.items() if k != "seed"} == {
        k: v for k, v in default.meta.train_recipe.items() if k != "seed"
    }
    a, b = default.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
