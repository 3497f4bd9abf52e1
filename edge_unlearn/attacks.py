"""Privacy and relearning attacks on an unlearned model (docs/design.md §3), each with its convention stated.

- :func:`mia_entropy` — membership inference from the entropy of the softmax, logistic regression, as in the
  SSD code (Foster et al.; from Chundawat et al.): fraction of forget samples judged "member"; lower is better.
- :func:`mia_svc` — the SVC membership inference of the SalUn code (Jia et al. 2023, Fan et al. 2024);
  reported as the member rate and as SalUn's *efficacy* = 1 − member rate; higher efficacy is better.
- :func:`probe_recoverability` — linear-probe accuracy on the forgotten classes from penultimate features.
- :func:`prototype_relearn_attack` — the prototypical relearning attack (Ha et al., arXiv 2506.01318), k = 5.
- :func:`relearn_time` — fine-tuning steps on k forget samples until forget accuracy is back to 90% of the
  original's.
- Unlearning seconds are :attr:`edge_unlearn.unlearn.ForgetResult.seconds` (the time inside the method,
  masking included, data transfer excluded).

Every figure is computed on the model as deployed (class mask applied) unless the function says the mask is
lifted; "lifting the mask" means the attacker holds the weights and deletes the mask for the forgotten classes.
Longer than 500 lines because the attacks share their conventions and helpers (softmax as deployed, sample draws), which must not drift apart.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .core.figures import retain_drop
from .data import Dataset, ImageSource, preprocess, take_samples
from .errors import UsageError
from .metrics import model_outputs, probe_forget_accuracy, tensor_accuracy
from .models import UnlearnableClassifier

ALPHA_GRID = (0.2, 0.4, 0.6, 0.8)


# ---------------------------------------------------------------------------------------------
# helpers


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row, with 0·log 0 = 0 (as the SSD/SalUn code)."""
    probs = probs.double()
    return -torch.where(probs > 0, probs * probs.clamp_min(1e-300).log(), torch.zeros_like(probs)).sum(1)


def _pick(n: int, limit: int | None, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randperm(n, generator=gen)
    return idx if limit is None else idx[:limit]


def _probs(
    model: UnlearnableClassifier,
    images: ImageSource | torch.Tensor,
    data: Dataset,
    masked: bool,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax of the model's logits for uint8 images (``indices``: those of a source, read batch by batch);
    ``masked`` applies the class mask (as deployed)."""
    _, logits = model_outputs(model, images, data, indices=indices)
    if masked:
        logits = logits.masked_fill(~model.class_mask.cpu(), float("-inf"))
    return torch.softmax(logits.double(), 1)


def _split(data: Dataset, forget_classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    forget = torch.tensor(sorted(set(int(c) for c in forget_classes)))
    if len(forget) == 0:
        raise UsageError("no forget class was given; pass at least one class index")
    in_forget = torch.isin(data.y_train, forget)
    return torch.nonzero(in_forget).flatten(), torch.nonzero(~in_forget).flatten()


# ---------------------------------------------------------------------------------------------
# membership inference


def _mia_feature(probs: torch.Tensor, feature: str) -> np.ndarray:
    """The attacker's one-number view of a softmax: its entropy, or its top probability (``confidence``)."""
    value = entropy(probs) if feature == "entropy" else probs.max(1).values
    return value.numpy().reshape(-1, 1)


def mia_entropy_from_probs(
    member_probs: torch.Tensor, nonmember_probs: torch.Tensor, target_probs: torch.Tensor, feature: str = "entropy"
) -> float:
    """SSD convention: fit ``LogisticRegression(class_weight="balanced")`` on the entropy (or, ``feature=
    "confidence"``, the top probability) of member (label 1) and non-member (label 0) softmax outputs; return the
    fraction of ``target_probs`` predicted "member"."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([_mia_feature(member_probs, feature), _mia_feature(nonmember_probs, feature)])
    y = np.concatenate([np.ones(len(member_probs)), np.zeros(len(nonmember_probs))])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs")
    clf.fit(x, y)
    return float(clf.predict(_mia_feature(target_probs, feature)).mean())


def mia_entropy(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    max_samples: int | None = 5000,
    seed: int = 0,
    masked: bool = True,
    feature: str = "entropy",
) -> float:
    """Entropy membership inference, SSD convention (``get_membership_attack_prob`` of the SSD code).

    Members = retained-class training samples, non-members = the whole test split (all classes, as SSD's
    ``valid_dl``), target = the forgotten classes' training samples. Returns the fraction of targets judged
    "member": lower is better; a retrained model gives the reference (not 0). ``max_samples`` caps each of
    the three sets (random subset, ``seed``); ``masked`` uses the deployed (masked) softmax; ``feature=
    "confidence"`` attacks with the top probability instead of the entropy."""
    gen = torch.Generator().manual_seed(seed)
    forget_idx, retain_idx = _split(data, forget_classes)
    members = retain_idx[_pick(len(retain_idx), max_samples, gen)]
    nonmembers = _pick(len(data.y_test), max_samples, gen)
    targets = forget_idx[_pick(len(forget_idx), max_samples, gen)]
    return mia_entropy_from_probs(
        _probs(model, data.x_train, data, masked, members),
        _probs(model, data.x_test, data, masked, nonmembers),
        _probs(model, data.x_train, data, masked, targets),
        feature,
    )


def _svc_feature(probs: torch.Tensor, labels: torch.Tensor, feature: str) -> np.ndarray:
    if feature == "confidence":
        out = probs.gather(1, labels.view(-1, 1))
    elif feature == "entropy":
        out = entropy(probs).view(-1, 1)
    elif feature == "correctness":
        out = (probs.argmax(1) == labels).double().view(-1, 1)
    elif feature == "prob":
        out = probs
    else:
        raise UsageError(f"unknown SVC MIA feature {feature!r}; choose confidence, entropy, correctness or prob")
    return out.numpy()


def mia_svc_from_probs(
    shadow_member: tuple[torch.Tensor, torch.Tensor],
    shadow_nonmember: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    feature: str = "confidence",
) -> dict[str, float]:
    """SalUn convention (``SVC_fit_predict``): ``SVC(C=3, gamma="auto", kernel="rbf")`` fitted on a feature
    of (probs, labels) of shadow members (1) and non-members (0); returns ``member_rate`` (fraction of the
    target predicted member) and ``efficacy`` = 1 − member_rate (SalUn's MIA-Efficacy; higher = more
    forgotten)."""
    from sklearn.svm import SVC

    x = np.concatenate([_svc_feature(*shadow_member, feature), _svc_feature(*shadow_nonmember, feature)])
    y = np.concatenate([np.ones(len(shadow_member[0])), np.zeros(len(shadow_nonmember[0]))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    rate = float(clf.predict(_svc_feature(*target, feature)).mean())
    return {"member_rate": rate, "efficacy": 1.0 - rate}


def mia_svc(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    feature: str = "confidence",
    max_samples: int | None = 2000,
    seed: int = 0,
    masked: bool = True,
) -> dict[str, float]:
    """SVC membership inference, SalUn convention (``SVC_MIA`` with ``target_test=None``).

    Shadow members = retained-class training samples (as many as the test split, capped), shadow
    non-members = the test split (all classes), target = the forgotten classes' training samples. The
    feature is SalUn's ``confidence`` (softmax probability of the true label) by default. Returns
    ``{"member_rate", "efficacy"}``; SalUn reports efficacy (higher is better; compare with ``retrain``).
    ``max_samples`` caps each set (the RBF-SVC is quadratic in its training size)."""
    gen = torch.Generator().manual_seed(seed)
    forget_idx, retain_idx = _split(data, forget_classes)
    n_test = len(data.x_test) if max_samples is None else min(len(data.x_test), max_samples)
    mem = retain_idx[_pick(len(retain_idx), n_test, gen)]
    non = _pick(len(data.x_test), n_test, gen)
    tgt = forget_idx[_pick(len(forget_idx), max_samples, gen)]
    return mia_svc_from_probs(
        (_probs(model, data.x_train, data, masked, mem), data.y_train[mem]),
        (_probs(model, data.x_test, data, masked, non), data.y_test[non]),
        (_probs(model, data.x_train, data, masked, tgt), data.y_train[tgt]),
        feature=feature,
    )


# ---------------------------------------------------------------------------------------------
# linear probe


#: Can a linear read-out recover the forgotten classes? The one probe: :func:`edge_unlearn.metrics.probe_forget_accuracy`.
probe_recoverability = probe_forget_accuracy


# ---------------------------------------------------------------------------------------------
# prototypical relearning attack


@dataclass(frozen=True)
class RelearnAttackResult:
    """Outcome of :func:`prototype_relearn_attack` (accuracies on the test split)."""

    forget_acc: float
    retain_acc: float
    retain_drop: float
    alpha: float
    mask_lifted: bool
    forget_acc_before: float
    retain_acc_before: float
    grid: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def prototype_relearn_attack(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    k: int = 5,
    alphas: Sequence[float] = ALPHA_GRID,
    max_retain_drop: float = 0.01,
    lift_mask: bool = False,
    seed: int = 0,
) -> RelearnAttackResult:
    """Prototypical relearning attack (Ha, Park, Yoon, arXiv 2506.01318), docs/design.md §3 convention.

    The attacker has ``k`` training samples of each forgotten class c and the weights. p_c = mean penultimate
    feature of those samples, L2-normalised and rescaled to the mean L2 norm of the retained classes' head rows
    (so the prototype is on the scale of a real class row). Then W[c] ← α·p_c + (1−α)·W[c], b[c] ← (1−α)·b[c],
    with α the largest of ``alphas`` whose retained-class test accuracy drops by at most ``max_retain_drop``
    (absolute, 0.01 = 1 point) against the attacked model's own before the attack; α = 0 (no change) if none
    qualifies. Returns the forget accuracy on the test split at that α.

    ``lift_mask=False`` attacks the model as deployed (a masked forgotten class stays at 0: the mask is what
    holds); ``lift_mask=True`` first deletes the mask for ``forget_classes``, i.e. tests what the weights
    alone still know. The backbone is unchanged, so features are computed once and only the head varies.
    """
    forget = sorted(set(int(c) for c in forget_classes))
    if k < 1:
        raise UsageError(f"the relearning attack needs k ≥ 1 forget samples, got {k}")
    feats, _ = model_outputs(model, data.x_test, data)
    x_k, y_k = take_samples(data, forget, k, seed=seed)
    proto_feats, _ = model_outputs(model, x_k, data)
    return prototype_attack_on_features(
        feats,
        data.y_test,
        proto_feats,
        y_k,
        model.head.weight,
        model.head.bias,
        model.class_mask,
        forget,
        alphas,
        max_retain_drop,
        lift_mask,
    )


@torch.no_grad()
def prototype_attack_on_features(
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    proto_features: torch.Tensor,
    proto_labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    class_mask: torch.Tensor,
    forget_classes: Sequence[int],
    alphas: Sequence[float] = ALPHA_GRID,
    max_retain_drop: float = 0.01,
    lift_mask: bool = False,
) -> RelearnAttackResult:
    """:func:`prototype_relearn_attack` on penultimate features already computed (test split [N, D] and the
    attacker's samples [k·F, D]) and a head (``weight`` [C, D], ``bias`` [C] or None, ``class_mask`` [C]):
    for tools that compute features another way (an edit simulated on cached activations)."""
    forget = sorted(set(int(c) for c in forget_classes))
    mask = class_mask.detach().cpu().clone()
    if lift_mask:
        mask[forget] = True
    w = weight.detach().cpu().double()
    b = bias.detach().cpu().double() if bias is not None else torch.zeros(w.shape[0]).double()
    feats = test_features.detach().cpu().double()
    y = test_labels.cpu()
    num_classes = w.shape[0]
    retained = [c for c in range(num_classes) if c not in forget]
    retained_rows = [c for c in range(num_classes) if c not in forget and bool(class_mask[c])]
    row_norm = w[retained_rows].norm(dim=1).mean() if retained_rows else torch.tensor(1.0, dtype=torch.float64)

    def predict(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return (feats @ weight.T + bias).masked_fill(~mask, float("-inf")).argmax(1)

    pred0 = predict(w, b)
    forget0, retain0 = tensor_accuracy(pred0, y, forget), tensor_accuracy(pred0, y, retained)
    best = (0.0, forget0, retain0)
    grid = []
    for alpha in sorted(alphas):
        w2, b2 = w.clone(), b.clone()
        for c in forget:
            proto = proto_features[proto_labels.cpu() == c].cpu().double().mean(0)
            proto = proto / proto.norm().clamp_min(1e-12) * row_norm
            w2[c] = alpha * proto + (1 - alpha) * w[c]
            b2[c] = (1 - alpha) * b[c]
        pred = predict(w2, b2)
        fa, ra = tensor_accuracy(pred, y, forget), tensor_accuracy(pred, y, retained)
        grid.append({"alpha": float(alpha), "forget_acc": fa, "retain_acc": ra})
        if retain_drop(retain0, ra) <= max_retain_drop + 1e-12:
            best = (float(alpha), fa, ra)
    return RelearnAttackResult(
        forget_acc=best[1],
        retain_acc=best[2],
        retain_drop=retain_drop(retain0, best[2]),
        alpha=best[0],
        mask_lifted=lift_mask,
        forget_acc_before=forget0,
        retain_acc_before=retain0,
        grid=grid,
    )


# ---------------------------------------------------------------------------------------------
# relearn time


@dataclass(frozen=True)
class RelearnTimeResult:
    """Outcome of :func:`relearn_time`: ``steps`` is None when the target was not reached in ``max_steps``."""

    steps: int | None
    target_acc: float
    final_forget_acc: float
    max_steps: int
    history: list[float] = field(default_factory=list)

    @property
    def steps_or_cap(self) -> int:
        """``steps``, or ``max_steps`` when not reached (a right-censored figure: "more than")."""
        return self.steps if self.steps is not None else self.max_steps

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reached"] = self.steps is not None
        return data


def relearn_time(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    target_acc: float,
    k: int = 5,
    lr: float = 1e-3,
    max_steps: int = 50,
    eval_samples: int | None = 500,
    seed: int = 0,
) -> RelearnTimeResult:
    """Relearn time: full-batch fine-tuning steps on ``k`` training samples per forgotten class (Adam, ``lr``,
    cross-entropy, every parameter trains, BatchNorm in eval mode so k samples do not overwrite its statistics)
    until the forget accuracy on the test split is ≥ ``target_acc`` — by convention 0.9 × the original model's
    forget accuracy. The mask is lifted for ``forget_classes`` (a masked class can never come back; the
    attacker holds the weights). Accuracy is checked before the first step (0 steps) and after every step on
    up to ``eval_samples`` forgotten-class test images. More steps = harder to relearn; compare with
    ``retrain``. The model passed in is not changed."""
    forget = sorted(set(int(c) for c in forget_classes))
    if k < 1 or max_steps < 0:
        raise UsageError(f"relearn_time needs k ≥ 1 and max_steps ≥ 0, got k={k}, max_steps={max_steps}")
    work = copy.deepcopy(model).cpu()
    work.class_mask[forget] = True
    work.eval()
    x_k, y_k = take_samples(data, forget, k, seed=seed)
    x_k = preprocess(x_k, data.normalization)
    sel = torch.nonzero(torch.isin(data.y_test, torch.tensor(forget))).flatten()
    if eval_samples is not None:
        sel = sel[torch.randperm(len(sel), generator=torch.Generator().manual_seed(seed))[:eval_samples]]
    x_eval, y_eval = preprocess(data.x_test[sel], data.normalization), data.y_test[sel]

    def forget_acc() -> float:
        with torch.no_grad():
            return tensor_accuracy(work(x_eval).argmax(1).cpu(), y_eval.cpu())

    opt = torch.optim.Adam(work.parameters(), lr=lr)
    history = [forget_acc()]
    steps = 0 if history[0] >= target_acc else None
    step = 0
    while steps is None and step < max_steps:
        loss = F.cross_entropy(work(x_k), y_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        history.append(forget_acc())
        if history[-1] >= target_acc:
            steps = step
    return RelearnTimeResult(
        steps=steps, target_acc=float(target_acc), final_forget_acc=history[-1], max_steps=max_steps, history=history
    )


# ---------------------------------------------------------------------------------------------
# the forgetting audit (issue #15): every measure, at every depth, in one versioned report

AUDIT_SCHEMA = "edge_unlearn.forgetting_audit"
AUDIT_VERSION = 1
#: Relearn-time target as a fraction of the original model's forget accuracy (:func:`relearn_time`).
RELEARN_TARGET_FRACTION = 0.9


@dataclass(frozen=True)
class ForgettingAuditConfig:
    """Settings of :func:`forgetting_audit` (recorded in the report so two audits can be compared)."""

    probe_train_size: int = 5000
    k: int = 5
    max_retain_drop: float = 0.01
    mia_max_samples: int = 5000
    relearn_lr: float = 1e-3
    relearn_max_steps: int = 50
    relearn_eval_samples: int = 500
    seed: int = 0
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForgettingAuditConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class ForgettingAudit:
    """What an auditor holding the weights can still get back of the forgotten classes.

    ``probe_by_depth``: linear-probe accuracy on the forgotten classes after every block and at the
    penultimate features (:func:`edge_unlearn.metrics.probe_forget_accuracy_by_depth`), None when not asked;
    ``attack_masked`` / ``attack_unmasked``: :func:`prototype_relearn_attack` as deployed / with the mask
    lifted; ``mia_entropy`` / ``mia_confidence``: :func:`mia_entropy` (masked) with the entropy / top-probability
    attacker; ``outputs``: :func:`edge_unlearn.output_audit.output_figures` against the retrained references
    (entropy and confidence alone without them); ``relearn``: :func:`relearn_time` against
    ``relearn_target`` (how it was chosen: ``relearn_target_source``). Attack fields are None when attacks
    were not asked. Every figure is lower = more forgotten except relearn steps (higher = harder to relearn);
    judge them beside the retrained model's, never against 0."""

    forget_classes: list[int]
    config: dict[str, Any]
    probe_by_depth: dict[str, float] | None = None
    attack_masked: dict[str, Any] | None = None
    attack_unmasked: dict[str, Any] | None = None
    mia_entropy: float | None = None
    mia_confidence: float | None = None
    outputs: dict[str, float] | None = None
    relearn: dict[str, Any] | None = None
    relearn_target: float | None = None
    relearn_target_source: str | None = None
    seconds: float = 0.0
    schema: str = AUDIT_SCHEMA
    version: int = AUDIT_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForgettingAudit:
        """Read a report written by :meth:`to_json` (after a JSON round trip; NaN written as null stays None)."""
        if data.get("schema") != AUDIT_SCHEMA or data.get("version") != AUDIT_VERSION:
            raise UsageError(
                f"not a forgetting audit of version {AUDIT_VERSION} (schema {data.get('schema')!r}, "
                f"version {data.get('version')!r}); re-run the audit with this edge-unlearn"
            )
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def figures(self) -> dict[str, float | int | None]:
        """The headline figures, flat and in table order: ``probe@<depth>`` …, ``proto_attack_masked``,
        ``proto_attack_unmasked``, ``mia_entropy``, ``relearn_steps`` (the cap when not reached)."""
        out: dict[str, float | int | None] = {}
        for name, value in (self.probe_by_depth or {}).items():
            out[f"probe@{name}"] = value
        if self.attack_masked is not None:
            out["proto_attack_masked"] = self.attack_masked["forget_acc"]
        if self.attack_unmasked is not None:
            out["proto_attack_unmasked"] = self.attack_unmasked["forget_acc"]
        if self.mia_entropy is not None:
            out["mia_entropy"] = self.mia_entropy
        if self.mia_confidence is not None:
            out["mia_confidence"] = self.mia_confidence
        for name, value in (self.outputs or {}).items():
            out[f"out_{name}"] = value
        if self.relearn is not None:
            steps = self.relearn["steps"]
            out["relearn_steps"] = steps if steps is not None else self.relearn["max_steps"]
        return out


def default_relearn_target(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    original: UnlearnableClassifier | None = None,
) -> tuple[float, str]:
    """(target, how it was chosen) for :func:`relearn_time`: 0.9 × the original's unmasked forget accuracy;
    without an original, 0.9 × ``model``'s retained-class accuracy (what a learned class reaches here)."""
    forget = sorted(set(int(c) for c in forget_classes))
    if original is not None:
        _, logits = model_outputs(original, data.x_test, data)
        return (
            RELEARN_TARGET_FRACTION * tensor_accuracy(logits.argmax(1), data.y_test, forget),
            f"{RELEARN_TARGET_FRACTION} x the original's forget accuracy",
        )
    _, logits = model_outputs(model, data.x_test, data)
    retained = [c for c in range(data.num_classes) if c not in forget]
    return (
        RELEARN_TARGET_FRACTION * tensor_accuracy(logits.argmax(1), data.y_test, retained),
        f"{RELEARN_TARGET_FRACTION} x this model's retained accuracy (no original given)",
    )


def forgetting_audit(
    model: UnlearnableClassifier,
    data: Dataset,
    forget_classes: Sequence[int],
    depth: bool = True,
    attacks: bool = True,
    relearn_target: float | None = None,
    relearn_target_source: str | None = None,
    config: ForgettingAuditConfig = ForgettingAuditConfig(),
    references: Sequence[UnlearnableClassifier] = (),
) -> ForgettingAudit:
    """Audit how forgotten ``forget_classes`` are in ``model``: the probe at every depth (``depth``) and the
    attacks (``attacks``: prototype attack as deployed and with the mask lifted, entropy MIA, relearn time).
    ``relearn_target``: default :func:`default_relearn_target` without an original — pass the same target
    (from the original) to every model you compare. ``references``: retrained models the outputs are compared
    with (:mod:`edge_unlearn.output_audit`; with ``attacks``). The model is not changed."""
    import time

    forget = sorted(set(int(c) for c in forget_classes))
    if not forget:
        raise UsageError("the forgetting audit needs at least one forgotten class; pass --forget")
    if not (depth or attacks):
        raise UsageError("the forgetting audit needs --depth and/or --attacks")
    t0 = time.perf_counter()
    fields: dict[str, Any] = {}
    if depth:
        from .metrics import probe_forget_accuracy_by_depth

        fields["probe_by_depth"] = probe_forget_accuracy_by_depth(
            model, data, forget, config.probe_train_size, config.seed
        )
    if attacks:
        for key, lift in (("attack_masked", False), ("attack_unmasked", True)):
            fields[key] = prototype_relearn_attack(
                model,
                data,
                forget,
                k=config.k,
                lift_mask=lift,
                seed=config.seed,
                max_retain_drop=config.max_retain_drop,
            ).to_json()
        fields["mia_entropy"] = mia_entropy(model, data, forget, max_samples=config.mia_max_samples, seed=config.seed)
        fields["mia_confidence"] = mia_entropy(
            model, data, forget, max_samples=config.mia_max_samples, seed=config.seed, feature="confidence"
        )
        from .output_audit import output_figures

        fields["outputs"] = output_figures(model, data, forget, references, seed=config.seed)
        if relearn_target is None:
            relearn_target, relearn_target_source = default_relearn_target(model, data, forget)
        fields["relearn"] = relearn_time(
            model,
            data,
            forget,
            relearn_target,
            k=config.k,
            lr=config.relearn_lr,
            max_steps=config.relearn_max_steps,
            eval_samples=config.relearn_eval_samples,
            seed=config.seed,
        ).to_json()
        fields["relearn_target"] = float(relearn_target)
        fields["relearn_target_source"] = relearn_target_source or "given"
    return ForgettingAudit(forget_classes=forget, config=config.to_json(), seconds=time.perf_counter() - t0, **fields)
