"""Shared fixtures: a small lenet trained on scikit-learn's digits, and paths to the shared real data."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_npz(name: str) -> str:
    """Dataset spec of a shared real-data archive; skips the test when the folder is absent."""
    path = SHARED_DATA / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data beside the checkout)")
    return f"npz:{path}"


@pytest.fixture(scope="session")
def digits():
    from edge_unlearn.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory, digits) -> Path:
    """A lenet trained on digits (about 3 s on 2 cores), saved as a checkpoint."""
    from edge_unlearn.checkpoint import CheckpointMeta, save_checkpoint
    from edge_unlearn.training import TrainConfig, train_model

    torch.set_num_threads(2)
    recipe = TrainConfig(epochs=1, min_steps=150, seed=0)
    result = train_model("lenet", digits, recipe, progress=False)
    meta = CheckpointMeta("lenet", digits.num_classes, digits.class_names, digits.input_shape,
                          digits.normalization, "digits", train_recipe=recipe.to_json())
    path = tmp_path_factory.mktemp("ckpt") / "original.safetensors"
    save_checkpoint(path, result.model, meta)
    return path
