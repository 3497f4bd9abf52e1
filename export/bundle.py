"""Writes the evaluation bundle (format: :mod:`edge_unlearn.deploy.bundle`) from a checkpoint and a dataset:
preprocessed test images and the checkpoint's FP32 logits, with their provenance (dataset sha256, the drawn
test-split rows, the checkpoint's sha256) and a digest over all of it. Host side: runs the checkpoint in torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_unlearn import __version__
from edge_unlearn.deploy.bundle import FORMAT, Bundle, load_bundle, write_bundle
from edge_unlearn.deploy.onnx_meta import MASK_VALUE, check_output_path
from edge_unlearn.errors import UsageError
from edge_unlearn.fileio import atomic_output, sha256_file

#: what ``dataset_sha256`` is the sha256 of, by kind of dataset spec
NPZ_FILE = "the .npz file"
TEST_SPLIT = "the test split: int64 labels, then uint8 images [N, C, H, W] at the model's input size, in order"


def dataset_sha256(spec: str, data, batch_size: int = 256) -> tuple[str, str]:
    """(sha256, what it is the sha256 of) identifying the dataset the bundle's samples were drawn from: the file
    of an ``npz:`` spec, else the test split as the model reads it (labels and images)."""
    import hashlib

    if spec.strip().startswith("npz:"):
        return sha256_file(spec.strip()[4:]), NPZ_FILE
    digest = hashlib.sha256(np.ascontiguousarray(data.y_test.numpy(), dtype="<i8").tobytes())
    for batch in data.x_test.batches(batch_size):
        digest.update(np.ascontiguousarray(batch.numpy(), dtype=np.uint8).tobytes())
    return digest.hexdigest(), TEST_SPLIT


def make_bundle(
    checkpoint: str | Path,
    dataset: str | None,
    output: str | Path,
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    audit: Callable[..., dict[str, np.ndarray]] | None = None,
    data_dir: str | None = None,
    download: bool = False,
) -> Bundle:
    """Preprocessed test images of ``dataset`` (None: the one recorded in the checkpoint, like ``evaluate``)
    + the checkpoint's FP32 logits, written atomically.

    ``per_class`` caps the samples of each class (None: the whole test split); ``data_dir``/``download``: where
    a torchvision dataset is read from, as in :func:`edge_unlearn.data.load_dataset`. ``audit`` (host side,
    :func:`edge_unlearn.export.audit_fit.audit_builder`) adds the feature-level audit's arrays."""
    import torch

    from edge_unlearn.checkpoint import load_checkpoint
    from edge_unlearn.data import load_dataset, preprocess

    check_output_path(output, [checkpoint])
    ckpt = load_checkpoint(checkpoint)
    model, meta = ckpt.model.eval(), ckpt.meta
    if not model.forgotten_classes:
        raise UsageError(
            f"{checkpoint} has no forgotten classes; make the bundle from the checkpoint that "
            "`edge-unlearn forget` wrote"
        )
    dataset = dataset or meta.dataset
    if not dataset:
        raise UsageError(f"{checkpoint} records no dataset; pass --dataset SPEC (the one it was trained on)")
    # through the checkpoint's preprocessing (imported models, train --image-size); images read lazily
    data = load_dataset(
        dataset,
        data_dir=data_dir,
        download=download,
        preprocessing=meta.preprocessing,
        normalization=meta.normalization,
    )
    if data.num_classes > meta.num_classes or tuple(data.input_shape) != tuple(meta.input_shape):
        raise UsageError(
            f"dataset {dataset} ({data.num_classes} classes, images {tuple(data.input_shape)}) does not fit "
            f"the model ({meta.num_classes} classes, images {tuple(meta.input_shape)}); use the dataset "
            "it was trained on"
        )
    if per_class is not None and per_class < 1:
        raise UsageError(f"--per-class must be at least 1, got {per_class}")
    labels = data.y_test.numpy()
    idx = np.arange(len(labels))
    if per_class is not None:
        rng = np.random.default_rng(seed)
        idx = np.sort(
            np.concatenate(
                [rng.permutation(np.nonzero(labels == c)[0])[:per_class] for c in range(meta.num_classes)]
            ).astype(np.int64)
        )
    if not np.isin(labels[idx], model.forgotten_classes).any():
        raise UsageError(
            f"dataset {dataset} has no test samples of the forgotten classes {model.forgotten_classes}; "
            "the bundle could not show that they are forgotten"
        )
    parts, logit_parts = [], []
    with torch.no_grad():  # only the bundled images are read, batch by batch through the loader
        for batch in data.x_test.batches(batch_size, torch.from_numpy(idx)):
            parts.append(preprocess(batch, meta.normalization))
            logit_parts.append(model.logits(parts[-1], masked=False))
        x, logits = torch.cat(parts), torch.cat(logit_parts)
        logits = logits.masked_fill(~model.class_mask, MASK_VALUE)
    data_sha, data_sha_of = dataset_sha256(dataset, data, batch_size)
    info = {
        "format": FORMAT,
        "source_sha256": ckpt.sha256,
        "checkpoint": str(checkpoint),
        "dataset": dataset,
        "arch": meta.arch,
        "normalization": meta.normalization.to_json(),
        "input_shape": list(meta.input_shape),
        "preprocessing": meta.prep.to_json(),
        "mask_value": MASK_VALUE,
        "per_class": per_class,
        "seed": seed,
        "version": __version__,
        "provenance": {
            "dataset": dataset,
            "dataset_sha256": data_sha,
            "dataset_sha256_of": data_sha_of,
            "split": "test",
            "indices": "the array indices: the test-split rows bundled, in order",
            "checkpoint_sha256": ckpt.sha256,
        },
    }
    extra = audit(ckpt, data, x, labels[idx], logits.numpy().astype(np.float32)) if audit is not None else {}
    output = Path(output)
    with atomic_output(output) as tmp:
        with open(tmp, "wb") as handle:  # np.savez_compressed adds .npz to a str path; a handle keeps ours
            arrays = {
                "inputs": x.numpy().astype(np.float32),
                "labels": labels[idx].astype(np.int64),
                "reference_logits": logits.numpy().astype(np.float32),
                "class_names": np.asarray(meta.class_names, dtype=np.str_),
                "forgotten_classes": np.asarray(model.forgotten_classes, dtype=np.int64),
                "indices": idx.astype(np.int64),
            }
            write_bundle(handle, {**arrays, **extra}, info)
        load_bundle(tmp)  # the same checks a reader makes, before the file takes its name
    return load_bundle(output)
