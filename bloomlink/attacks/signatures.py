"""The bit-correlation signature attack: read each mined bit set as a membership signature.

Stage: privacy evaluation. The miner (``bloomlink.attacks.mining``) gives bit sets and the
records carrying each; a set whose members are exactly the records with one attribute value
discloses that value for every record. Two labellings say which value a set stands for:

* **oracle**: the truth picks, for every attribute value, the set (or the conjunction of up
  to ``max_terms`` sets, e.g. a surname's bigrams) with the best ``min(precision, recall)``,
  and each set's membership threshold is tuned too. It picks on a random half of the records
  and is scored on the other half, so it cannot fit a rare value's few holders by chance.
  An upper bound on any labelling from the mined sets: if no set identifies a value here,
  none does;
* **insider**: an attacker who knows the plaintext of a few encoded records (``seeds``) picks,
  per value, the set whose seed members best match the seeds holding that value (F1 on the
  seeds; ties go to the set whose frequency is closest to the value's). Realistic, no truth
  beyond the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bloomlink.attacks.attributes import AttributeTable, ValueScore
from bloomlink.attacks.mining import BitSignature
from bloomlink.attacks.results import AttackName, AttributeAttackResult
from bloomlink.attacks.views import BitView
from protocol.errors import InvariantError

__all__ = ["SignatureSettings", "insider_signature_attack", "oracle_signature_attack"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SignatureSettings:
    """How hard the oracle tries: membership thresholds as fractions of a set's bits, and
    conjunctions of up to ``max_terms`` sets from the ``candidates`` best-recall sets."""

    fractions: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    max_terms: int = 6
    candidates: int = 24
    min_conjunction_recall: float = 0.8
    split_seed: int = 0


def _memberships(
    view: BitView, signatures: Sequence[BitSignature], fractions: Sequence[float]
) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """Every signature's members at its own threshold and at each fraction of its bits."""
    rows: list[npt.NDArray[np.bool_]] = []
    how: list[str] = []
    for signature in signatures:
        counts = view.bits[:, np.asarray(signature.bits, dtype=np.intp)].sum(axis=1)
        size = len(signature.bits)
        thresholds = {signature.threshold} | {max(1, round(f * size)) for f in fractions}
        for threshold in sorted(thresholds):
            rows.append(counts >= threshold - 0.5)
            how.append(f"{threshold} of {size} bits")
    if not rows:
        return np.zeros((0, len(view.bits)), dtype=bool), how
    return np.stack(rows), how


def _precision_recall(
    members: npt.NDArray[np.bool_], truth: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(predictors, values)`` precision and recall of each row of ``members`` per value."""
    member_matrix = members.astype(np.float32)
    hits = (member_matrix @ truth).astype(np.float64)
    claimed = member_matrix.sum(axis=1, dtype=np.float64)[:, None]
    support = truth.sum(axis=0, dtype=np.float64)[None, :]
    precision = np.divide(hits, claimed, out=np.zeros_like(hits), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    return precision, recall


def _conjunction(
    members: npt.NDArray[np.bool_],
    has: npt.NDArray[np.bool_],
    precision: npt.NDArray[np.float64],
    recall: npt.NDArray[np.float64],
    settings: SignatureSettings,
) -> list[int]:
    """A greedy conjunction of high-recall predictors for one value (on the fitting half)."""
    support = int(has.sum())
    if support == 0:
        return []
    eligible = np.flatnonzero(recall >= settings.min_conjunction_recall)
    chosen = eligible[np.argsort(-precision[eligible], kind="stable")][: settings.candidates]
    current = np.ones(len(has), dtype=bool)
    best = 0.0
    terms: list[int] = []
    for _ in range(settings.max_terms):
        step = None
        for candidate in chosen.tolist():
            if candidate in terms:
                continue
            trial = current & members[candidate]
            count = int(trial.sum())
            if count == 0:
                continue
            true = int((trial & has).sum())
            quality = min(true / count, true / support)
            if quality > best + 1e-9:
                best, step = quality, candidate
        if step is None:
            break
        terms.append(step)
        current &= members[step]
    return terms


def _finding(score: ValueScore) -> str:
    return (
        f"{score.attribute}={score.value}: P={score.precision:.2f} R={score.recall:.2f} "
        f"({score.how})"
    )


def oracle_signature_attack(
    view: BitView,
    signatures: Sequence[BitSignature],
    table: AttributeTable,
    settings: SignatureSettings = SignatureSettings(),
) -> AttributeAttackResult:
    """Each attribute value's best single set or conjunction of sets, labelled by the truth.

    The truth picks on a random half of the records and the pick is scored on the other half,
    so a predictor fitted to a rare value's few holders by chance scores as what it is."""
    keys, truth = table.indicators()
    members, how = _memberships(view, signatures, settings.fractions)
    if not keys or len(members) == 0:
        return AttributeAttackResult(
            attack=AttackName.SIGNATURE_ORACLE, view=view.name, scores=(), findings=()
        )
    fit = np.random.default_rng(settings.split_seed).random(table.records) < 0.5
    test = ~fit
    fit_precision, fit_recall = _precision_recall(members[:, fit], truth[fit])
    single = np.argmax(np.minimum(fit_precision, fit_recall), axis=0)
    scores = []
    for column, (attribute, value) in enumerate(keys):
        has = truth[:, column] > 0
        terms = _conjunction(
            members[:, fit], has[fit], fit_precision[:, column], fit_recall[:, column], settings
        )
        candidates = [[int(single[column])]] + ([terms] if len(terms) > 1 else [])
        picked: tuple[float, list[int]] | None = None
        for candidate in candidates:
            claim = np.logical_and.reduce(members[candidate], axis=0)
            hits = int((claim & has)[fit].sum())
            count, support = int(claim[fit].sum()), int(has[fit].sum())
            quality = min(hits / count if count else 0.0, hits / support if support else 0.0)
            if picked is None or quality > picked[0]:
                picked = (quality, candidate)
        if picked is None:
            raise InvariantError("no candidate signature was scored")
        claim = np.logical_and.reduce(members[picked[1]], axis=0)
        hits = int((claim & has)[test].sum())
        count, support = int(claim[test].sum()), int(has[test].sum())
        scores.append(
            ValueScore(
                attribute=attribute,
                value=value,
                precision=hits / count if count else 0.0,
                recall=hits / support if support else 0.0,
                support=support,
                claimed=count,
                how=" AND ".join(how[term] for term in picked[1]),
            )
        )
    findings = [f"{len(signatures)} correlated bit sets mined; picked on half, scored on half"]
    findings += [
        _finding(score)
        for score in sorted(scores, key=lambda item: -item.min_pr)
        if score.min_pr >= 0.6
    ]
    return AttributeAttackResult(
        attack=AttackName.SIGNATURE_ORACLE,
        view=view.name,
        scores=tuple(scores),
        findings=tuple(findings),
    )


def insider_signature_attack(
    view: BitView,
    signatures: Sequence[BitSignature],
    table: AttributeTable,
    seeds: npt.NDArray[np.intp],
) -> AttributeAttackResult:
    """Sets labelled by the seeds alone: per value, the set whose members among the seeds best
    match the seeds that hold it."""
    keys, truth = table.indicators()
    if not keys or not signatures or len(seeds) == 0:
        return AttributeAttackResult(attack=AttackName.SIGNATURE_INSIDER, view=view.name, scores=())
    members = np.stack([signature.members for signature in signatures])
    on_seeds = members[:, seeds].astype(np.float32)
    seed_truth = truth[seeds]
    overlap = on_seeds @ seed_truth  # (signatures, values)
    seed_f1 = 2 * overlap / (on_seeds.sum(axis=1)[:, None] + seed_truth.sum(axis=0)[None, :] + 1e-9)
    frequency = members.mean(axis=1)[:, None]
    expected = seed_truth.mean(axis=0)[None, :]
    # lexicographic: seed F1 first, then closeness of frequency to the value's seed share
    rank = seed_f1 - 1e-3 * np.abs(frequency - expected)
    pick = np.argmax(rank, axis=0)
    scores = []
    for column, (attribute, value) in enumerate(keys):
        chosen = members[pick[column]]
        has = truth[:, column] > 0
        if seed_truth[:, column].sum() == 0 or seed_f1[pick[column], column] <= 0:
            chosen = np.zeros(len(has), dtype=bool)  # no seed holds it: no claim
        count, true = int(chosen.sum()), int((chosen & has).sum())
        scores.append(
            ValueScore(
                attribute=attribute,
                value=value,
                precision=true / count if count else 0.0,
                recall=true / int(has.sum()) if has.any() else 0.0,
                support=int(has.sum()),
                claimed=count,
                how=f"set of {len(signatures[pick[column]].bits)} bits, seed F1 "
                f"{seed_f1[pick[column], column]:.2f}",
            )
        )
    findings = [f"labelled with {len(seeds)} known records"] + [
        _finding(score)
        for score in sorted(scores, key=lambda item: -item.min_pr)
        if score.min_pr >= 0.6
    ]
    return AttributeAttackResult(
        attack=AttackName.SIGNATURE_INSIDER,
        view=view.name,
        scores=tuple(scores),
        findings=tuple(findings),
    )
