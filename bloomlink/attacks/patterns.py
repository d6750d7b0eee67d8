"""Keyless pattern mining: mined bit sets aligned to plaintext tokens by frequency structure.

Stage: privacy evaluation. The attack of Christen et al. (PAKDD 2018) and Vidanage et al.
(ICDE 2019) without the key and without any known record: the miner
(``bloomlink.attacks.mining``) finds the encodings' correlated bit sets; the attacker, who
knows the schema and tokenisation, tokenises a public-style reference population and aligns
the two by their frequency structure:

1. **families**: tokens of which a record holds at most one (a sex code; a birth year, month,
   day; a first bigram) are mutually exclusive, and so are their bit sets. Mutually exclusive
   mined sets are grouped greedily into cliques; each reference family is paired with the
   clique whose sorted frequencies are nearest, and their members are aligned by frequency
   rank. Rank alignment labels correctly only what frequency tells apart (February, the 31st,
   a skewed sex ratio, the age distribution): exchangeable values stay exchangeable;
2. **percolation**: the aligned pairs anchor a second alignment of every mined set to every
   reference token by their co-occurrence with the anchors, grown round by round from the
   surest matches (the graph-matching machinery on the token co-occurrence graph);
3. **read-out**: a record's attribute values are the aligned tokens it carries. Exact tokens
   (sex, date parts) give a value directly; n-gram fields (names, postcode) give the
   reference value whose tokens best match (Dice) the record's aligned tokens of that key.

Tokens of fields that share a key (``key_group``) set the same bits, so the reference counts
a token of a key label once per record, whichever field it came from.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bloomlink.attacks.attributes import (
    Attribute,
    AttributeTable,
    Labels,
    attribute_labels,
    score_predictions,
)
from bloomlink.attacks.graph_matching import match_features
from bloomlink.attacks.mining import BitSignature
from bloomlink.attacks.results import AttackName, AttributeAttackResult
from bloomlink.attacks.views import Row
from protocol.schema import LinkageSchema
from protocol.tokens import PAD, tokenise

__all__ = ["PatternSettings", "pattern_mining_attack", "reference_tokens"]

Item = tuple[str, str]
"""A reference token as the encoding sees it: (key label, token)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PatternSettings:
    rounds: int = 4
    growth: int = 40
    duplicate_jaccard: float = 0.9
    exclusive_share: float = 0.35
    exclusive_evidence: float = 1.5
    family_distance: float = 0.35
    candidates: int = 2000
    strongest: int = 8


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ReferenceTokens:
    """The tokens of a reference population, per key label, with who holds them."""

    items: tuple[Item, ...]
    members: npt.NDArray[np.bool_]  # (items, rows)
    families: tuple[tuple[int, ...], ...]  # mutually exclusive item indices


def _tag(token: str) -> str:
    """A token's family tag: its method tag (and date part), or its first n-gram."""
    tag = token.split(":", 1)[0]
    if token.startswith(("g", "p")) and ":" in token:
        gram = token.split(":")[-1]
        if gram.startswith(PAD):
            return tag + ":start"
        return ""  # other n-grams are not exclusive
    return tag


def reference_tokens(
    schema: LinkageSchema, rows: Sequence[Row], fields: Sequence[str], *, min_share: float
) -> ReferenceTokens:
    """Tokenise ``rows`` as the encoder would; keep tokens held by at least ``min_share`` of
    rows; group exclusive ones (at most one per row, per key label and tag) into families."""
    holders: dict[Item, set[int]] = defaultdict(set)
    tags: dict[Item, tuple[str, str]] = {}
    for index, spec in enumerate(schema.fields):
        if spec.name not in fields:
            continue
        for row_number, row in enumerate(rows):
            value = row[index]
            if value is None:
                continue
            for token_spec in spec.tokens:
                for token in tokenise(value, token_spec):
                    item = (spec.key_label, token)
                    holders[item].add(row_number)
                    tags[item] = (spec.key_label, _tag(token))
    minimum = max(1, int(min_share * len(rows)))
    items = sorted(item for item, who in holders.items() if len(who) >= minimum)
    members = np.zeros((len(items), len(rows)), dtype=bool)
    for position, item in enumerate(items):
        members[position, list(holders[item])] = True
    by_tag: dict[tuple[str, str], list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        if tags[item][1]:
            by_tag[tags[item]].append(position)
    families = []
    for positions in by_tag.values():
        if len(positions) >= 2 and (members[positions].sum(axis=0) > 1).mean() <= 0.01:
            families.append(tuple(positions))
    return ReferenceTokens(items=tuple(items), members=members, families=tuple(families))


def _distinct(signatures: Sequence[BitSignature], jaccard: float) -> list[BitSignature]:
    """Drop sets whose members nearly equal those of a larger set already kept."""
    ordered = sorted(signatures, key=lambda item: (-len(item.bits), item.bits))
    if not ordered:
        return []
    members = np.stack([item.members for item in ordered]).astype(np.float32)
    together = members @ members.T
    counts = members.sum(axis=1)
    union = counts[:, None] + counts[None, :] - together
    similar = together >= jaccard * np.maximum(union, 1.0)
    keep = np.zeros(len(ordered), dtype=bool)
    for index in range(len(ordered)):
        keep[index] = not similar[index, keep].any()
    kept = np.flatnonzero(keep).tolist()
    return sorted((ordered[index] for index in kept), key=lambda item: (-item.frequency, item.bits))


def _exclusive(
    members: npt.NDArray[np.bool_], share: float, evidence: float
) -> npt.NDArray[np.bool_]:
    """Pairs of rows that (almost) never hold together although chance alone would put at
    least ``evidence`` records in both."""
    matrix = members.astype(np.float32)
    together = matrix @ matrix.T
    counts = matrix.sum(axis=1)
    expected = np.outer(counts, counts) / max(members.shape[1], 1)
    exclusive: npt.NDArray[np.bool_] = (together <= share * expected) & (expected >= evidence)
    np.fill_diagonal(exclusive, False)
    return exclusive


def _cliques(exclusive: npt.NDArray[np.bool_]) -> list[tuple[int, ...]]:
    """Greedy maximal sets of mutually exclusive rows, one grown from each row: each step
    takes the allowed row with the most exclusive partners among the allowed rows."""
    found: set[tuple[int, ...]] = set()
    for start in range(len(exclusive)):
        clique = [start]
        allowed = np.flatnonzero(exclusive[start])
        while len(allowed):
            degree = exclusive[np.ix_(allowed, allowed)].sum(axis=1)
            chosen = int(allowed[int(np.argmax(degree))])
            clique.append(chosen)
            allowed = allowed[exclusive[chosen, allowed]]
        if len(clique) >= 2:
            found.add(tuple(sorted(clique)))
    return sorted(found)


def _profile_distance(clique: npt.NDArray[np.float64], family: npt.NDArray[np.float64]) -> float:
    """How far a clique's sorted shares are from the family's most common ones (relative)."""
    if len(clique) > len(family):
        return float("inf")
    mine = np.sort(clique)[::-1]
    theirs = np.sort(family)[::-1][: len(mine)]
    return float(np.abs(mine - theirs).sum() / max(theirs.sum(), 1e-9))


def _family_anchors(
    target: npt.NDArray[np.bool_], reference: ReferenceTokens, settings: PatternSettings
) -> list[tuple[int, int]]:
    """Rank-aligned (signature, item) pairs of the families that pair up: each reference
    family takes the largest clique within ``family_distance`` of its profile."""
    target_share = target.mean(axis=1)
    reference_share = reference.members.mean(axis=1)
    exclusive = _exclusive(target, settings.exclusive_share, settings.exclusive_evidence)
    cliques = _cliques(exclusive)
    options = []
    for family_index, family in enumerate(reference.families):
        wanted = reference_share[list(family)]
        for clique_index, clique in enumerate(cliques):
            distance = _profile_distance(target_share[list(clique)], wanted)
            if distance <= settings.family_distance:
                options.append((-len(clique), distance, family_index, clique_index))
    anchors: list[tuple[int, int]] = []
    used_families: set[int] = set()
    used_signatures: set[int] = set()
    for _, _, family_index, clique_index in sorted(options):
        clique = cliques[clique_index]
        if family_index in used_families or used_signatures & set(clique):
            continue
        used_families.add(family_index)
        used_signatures.update(clique)
        family = reference.families[family_index]
        by_share = sorted(clique, key=lambda row: -target_share[row])
        items = sorted(family, key=lambda row: -reference_share[row])
        anchors.extend(zip(by_share, items, strict=False))
    return anchors


def _co_occurrence_features(
    members: npt.NDArray[np.bool_], anchors: Sequence[int], strongest: int
) -> npt.NDArray[np.float32]:
    """Per node: its log share, its ``strongest`` largest shares of holders who also hold
    another node (the shape of its neighbourhood, comparable without any alignment), and the
    share of its holders who also hold each anchor."""
    matrix = members.astype(np.float32)
    counts = np.maximum(matrix.sum(axis=1), 1.0)
    share = np.log(counts / members.shape[1])[:, None]
    together = matrix @ matrix.T
    np.fill_diagonal(together, 0.0)
    conditional = together / counts[:, None]
    shape = -np.sort(-conditional, axis=1)[:, :strongest]
    columns = [share, shape]
    if anchors:
        columns.append(conditional[:, list(anchors)])
    return np.concatenate(columns, axis=1).astype(np.float32)


def _align(
    target: npt.NDArray[np.bool_],
    reference: ReferenceTokens,
    anchors: list[tuple[int, int]],
    settings: PatternSettings,
) -> dict[int, int]:
    """Signature -> item: the family anchors, and every other set by percolation from them."""
    known = np.array(anchors, dtype=np.intp).reshape(-1, 2)
    pairs = list(anchors)
    grown: dict[int, int] = {}
    for round_number in range(settings.rounds):
        target_features = _co_occurrence_features(
            target, [pair[0] for pair in pairs], settings.strongest
        )
        reference_features = _co_occurrence_features(
            reference.members, [pair[1] for pair in pairs], settings.strongest
        )
        matching = match_features(target_features, reference_features, known)
        claimed = np.flatnonzero(matching.claimed)
        order = claimed[np.argsort(matching.confidence[claimed], kind="stable")]
        grown = {int(matching.target[index]): int(matching.reference[index]) for index in claimed}
        surest = order[: settings.growth * (round_number + 1)]
        pairs = list(anchors) + [
            (int(matching.target[index]), int(matching.reference[index])) for index in surest
        ]
    return {**grown, **dict(anchors)}


def _exact_values(
    spec_index: int,
    key_label: str,
    reference: ReferenceTokens,
    carried: npt.NDArray[np.bool_],
    rows: list[list[str | None]],
    method: str,
) -> None:
    """Exact and date-part tokens give values directly: a record carrying exactly one token
    of a family gets its value (several or none: no claim)."""
    prefixes = ("x:",) if method == "exact" else ("y:", "m:", "d:")
    parts: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for position, (label, token) in enumerate(reference.items):
        for prefix in prefixes:
            if label == key_label and token.startswith(prefix):
                parts[prefix].append((position, token[len(prefix) :]))
    chosen: dict[str, list[str | None]] = {}
    for prefix, entries in parts.items():
        positions = [position for position, _ in entries]
        holding = carried[:, positions]
        single = holding.sum(axis=1) == 1
        which = np.argmax(holding, axis=1)
        chosen[prefix] = [
            entries[int(which[record])][1] if single[record] else None
            for record in range(len(rows))
        ]
    for record, row in enumerate(rows):
        if method == "exact":
            row[spec_index] = chosen.get("x:", [None] * len(rows))[record]
        else:  # rebuild an ISO date from whichever parts were read; unread parts stay blank
            year = chosen.get("y:", [None] * len(rows))[record] or "????"
            month = chosen.get("m:", [None] * len(rows))[record] or "??"
            day = chosen.get("d:", [None] * len(rows))[record] or "??"
            row[spec_index] = f"{year}-{month}-{day}"


def _read_out(
    schema: LinkageSchema,
    fields: Sequence[str],
    population: Sequence[Row],
    reference: ReferenceTokens,
    carried: npt.NDArray[np.bool_],
    settings: PatternSettings,
) -> dict[Attribute, Labels]:
    """Attribute labels from each record's aligned tokens (``carried``: records x items)."""
    records = carried.shape[0]
    rows: list[list[str | None]] = [[None] * len(schema.fields) for _ in range(records)]
    item_index = {item: position for position, item in enumerate(reference.items)}
    for index, spec in enumerate(schema.fields):
        if spec.name not in fields:
            continue
        methods = {token.method for token in spec.tokens}
        if methods in ({"exact"}, {"date_parts"}):
            _exact_values(index, spec.key_label, reference, carried, rows, methods.pop())
            continue
        counts = Counter(row[index] for row in population if row[index] is not None)
        candidates = [value for value, _ in counts.most_common(settings.candidates) if value]
        if not candidates:
            continue
        incidence = np.zeros((len(reference.items), len(candidates)), dtype=np.float32)
        for column, value in enumerate(candidates):
            for token_spec in spec.tokens:
                for token in tokenise(value, token_spec):
                    position = item_index.get((spec.key_label, token))
                    if position is not None:
                        incidence[position, column] = 1.0
        own = np.array([item[0] == spec.key_label for item in reference.items], dtype=np.float32)
        mine = carried.astype(np.float32) * own[None, :]
        shared = mine @ incidence
        sizes = incidence.sum(axis=0)
        dice = 2 * shared / np.maximum(mine.sum(axis=1)[:, None] + sizes[None, :], 1.0)
        best = np.argmax(dice, axis=1)
        for record in np.flatnonzero(dice[np.arange(records), best] > 0).tolist():
            rows[record][index] = candidates[int(best[record])]
    labels = attribute_labels(schema, rows, fields=fields)
    for labelled in labels.values():  # unread date parts are no claim
        unread = [value is not None and "?" in str(value) for value in labelled.tolist()]
        labelled[np.asarray(unread, dtype=np.bool_)] = None
    return labels


def pattern_mining_attack(
    signatures: Sequence[BitSignature],
    schema: LinkageSchema,
    fields: Sequence[str],
    population: Sequence[Row],
    table: AttributeTable,
    *,
    view: str,
    settings: PatternSettings = PatternSettings(),
) -> AttributeAttackResult:
    """Keyless pattern mining on one view's mined sets, aligned with ``population``."""
    distinct = _distinct(signatures, settings.duplicate_jaccard)
    records = table.records
    if not distinct:
        predicted: Mapping[Attribute, Labels] = {}
        findings: tuple[str, ...] = ("no correlated bit sets to align",)
    else:
        target = np.stack([signature.members for signature in distinct])
        min_share = max(float(target.mean(axis=1).min()) / 2, 1.0 / max(len(population), 1))
        reference = reference_tokens(schema, population, fields, min_share=min_share)
        anchors = _family_anchors(target, reference, settings)
        alignment = _align(target, reference, anchors, settings)
        carried = np.zeros((records, len(reference.items)), dtype=bool)
        for signature, item in alignment.items():
            carried[:, item] |= target[signature]
        predicted = _read_out(schema, fields, population, reference, carried, settings)
        findings = (
            f"{len(distinct)} distinct bit sets, {len(reference.items)} reference tokens, "
            f"{len(reference.families)} exclusive token families",
            f"{len(anchors)} family anchors, {len(alignment)} sets aligned to tokens",
        )
    scores = score_predictions(table, predicted, how="aligned tokens")
    return AttributeAttackResult(
        attack=AttackName.PATTERN_MINING, view=view, scores=tuple(scores), findings=findings
    )
