"""The attack recipe: every attack on every view of one encoded file, with its headline figures.

Stage: privacy evaluation. :func:`assess` is what benchmarks and tests call:

    report = assess(clks, layout, truth=Truth(rows=..., people=...),
                    reference=Reference(schema=..., population=..., overlap=..., ...))
    report.worst_attribute_min_pr      # over every attack and value: max of min(P, R)
    report.graph_reidentified_share    # the worse of keyless and seeded graph matching

The attacker is a curious linkage unit: it holds the encodings and the schema, never the key.
It may also hold a public-style ``population`` (name and date frequencies of other people),
and, for graph matching, plaintext records ``overlap`` that share people with the file; the
seeded forms assume an insider who knows ``seeds`` (encoding, plaintext) pairs. ``truth`` and
the people ids are used only to score.

Before the attacks, each group's linear diffusion is undone where the encodings allow it
(:mod:`bloomlink.attacks.linear`); the attribute attacks but frequency (identical encodings
stay identical either way) then also run on each undone group, ``"<group> (diffusion
undone)"``, and on the whole record with every undone group in place. Graph matching keeps
the encoded views (its shadow encodings are encoded, not undone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bloomlink.attacks.attributes import (
    Attribute,
    AttributeTable,
    Labels,
    ValueScore,
    attribute_labels,
    best_scores,
    score_predictions,
)
from bloomlink.attacks.frequency import frequency_attack
from bloomlink.attacks.graph_matching import (
    GraphMatchSettings,
    GraphSides,
    Matching,
    keyless_matching,
    score_matching,
    seeded_matching,
)
from bloomlink.attacks.linear import LinearRecovery, LinearSettings, recover_inputs
from bloomlink.attacks.mining import MiningSettings, mine_signatures
from bloomlink.attacks.patterns import PatternSettings, pattern_mining_attack
from bloomlink.attacks.results import AttackName, AttributeAttackResult, GraphMatchResult
from bloomlink.attacks.signatures import (
    SignatureSettings,
    insider_signature_attack,
    oracle_signature_attack,
)
from bloomlink.attacks.views import (
    WHOLE_RECORD,
    BitView,
    EncodedRecords,
    Row,
    RowEncoder,
    bit_matrix,
    bit_views,
)
from protocol.clk_layout import ClkLayout
from protocol.schema import LinkageSchema

__all__ = ["AssessmentSettings", "AttackReport", "Reference", "Truth", "assess"]

ALL_ATTACKS = frozenset(AttackName)
IDENTIFIED = 0.6
"""``min(precision, recall)`` at which an attribute value counts as identified (issue 19)."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Truth:
    """The encoded records' normalised values and person ids: for scoring only."""

    rows: Sequence[Row]
    people: Sequence[object]

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.people):
            raise ValueError("truth needs one person id per row")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Reference:
    """What the attacker knows besides the encodings.

    ``encode`` is the public encoding recipe; the attacker runs it under keys of its own
    (shadow encodings) to know what similarity two plaintext records would have.
    ``overlap_people`` is used only to score. ``group_fields`` says which schema fields each
    field group encodes (empty: every group encodes every field).
    """

    schema: LinkageSchema
    population: Sequence[Row]
    overlap: Sequence[Row]
    overlap_people: Sequence[object]
    encode: RowEncoder
    group_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.overlap) != len(self.overlap_people):
            raise ValueError("the overlapping reference needs one person id per row")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssessmentSettings:
    """Which attacks run and how hard; ``seed`` fixes the attacker's keys and known pairs."""

    attacks: frozenset[AttackName] = ALL_ATTACKS
    seeds: int = 50
    shadows: int = 8
    keyless_shadows: int = 4
    seed: int = 0
    min_support: int | None = None
    mining: MiningSettings = MiningSettings()
    signature: SignatureSettings = SignatureSettings()
    patterns: PatternSettings = PatternSettings()
    graph: GraphMatchSettings = GraphMatchSettings()
    linear: LinearSettings | None = LinearSettings()
    """Undo linear diffusion (bloomlink/attacks/linear.py) where it can; None: don't try."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackReport:
    """Every attack's result on every view, and the two headline figures."""

    views: tuple[str, ...]
    attribute_results: tuple[AttributeAttackResult, ...]
    graph_results: tuple[GraphMatchResult, ...]
    linear: tuple[LinearRecovery, ...] = ()
    """Each group's attempt to undo linear diffusion (empty when not tried)."""

    @property
    def worst_attribute(self) -> tuple[AttackName, str, ValueScore] | None:
        """The best-identified attribute value over all attacks and views."""
        best: tuple[AttackName, str, ValueScore] | None = None
        for result in self.attribute_results:
            score = result.best
            if score is not None and (best is None or score.min_pr > best[2].min_pr):
                best = (result.attack, result.view, score)
        return best

    @property
    def worst_attribute_min_pr(self) -> float:
        worst = self.worst_attribute
        return worst[2].min_pr if worst is not None else 0.0

    @property
    def graph_reidentified_share(self) -> float:
        return max((result.reidentified_share for result in self.graph_results), default=0.0)

    def graph_result(self, attack: AttackName, view: str) -> GraphMatchResult | None:
        for result in self.graph_results:
            if result.attack == attack and result.view == view:
                return result
        return None

    def best_by_attribute(self, attack: AttackName, view: str) -> dict[Attribute, ValueScore]:
        for result in self.attribute_results:
            if result.attack == attack and result.view == view:
                return best_scores(result.scores)
        return {}

    def identified(
        self, attack: AttackName, view: str, threshold: float = IDENTIFIED
    ) -> dict[Attribute, tuple[int, int]]:
        """Per attribute: (values with min(P, R) >= threshold, values scored)."""
        out: dict[Attribute, tuple[int, int]] = {}
        for result in self.attribute_results:
            if result.attack == attack and result.view == view:
                for score in result.scores:
                    hit, total = out.get(score.attribute, (0, 0))
                    out[score.attribute] = (hit + (score.min_pr >= threshold), total + 1)
        return out

    def lines(self) -> list[str]:
        """What each attack recovered and how well, for people."""
        out = [recovery.line() for recovery in self.linear]
        for result in self.attribute_results:
            best = best_scores(result.scores)
            summary = ", ".join(
                f"{attribute}={score.value} {score.precision:.2f}/{score.recall:.2f}"
                for attribute, score in best.items()
            )
            out.append(f"[{result.view}] {result.attack}: best P/R per attribute: {summary}")
            out.extend(f"    {line}" for line in result.findings[:2])
            identified = [score for score in result.scores if score.min_pr >= IDENTIFIED]
            if identified:
                out.append(
                    "    identified (min(P, R) >= 0.6): "
                    + ", ".join(
                        f"{score.attribute}={score.value} {score.precision:.2f}/{score.recall:.2f}"
                        for score in identified
                    )
                )
        for graph in self.graph_results:
            out.append(
                f"[{graph.view}] {graph.attack} ({graph.seeds} known pairs): "
                f"{graph.correct} of {graph.overlapping} overlapping people re-identified "
                f"({graph.reidentified_share:.1%}), {graph.claimed} claimed, precision "
                f"{graph.precision:.2f}"
            )
        return out


UNDONE = " (diffusion undone)"
"""Suffix of a view whose bits are a group's recovered pre-diffusion Bloom filters."""


def _undone_views(
    records: EncodedRecords, views: Sequence[BitView], settings: LinearSettings
) -> tuple[tuple[LinearRecovery, ...], tuple[BitView, ...]]:
    """Try to undo each group's linear diffusion; a view per group where it worked, and the
    whole record with every recovered group undone when there are several groups."""
    groups = records.layout.groups
    recoveries = tuple(
        recover_inputs(records.group(index), group=group.name, settings=settings)
        for index, group in enumerate(groups)
    )
    undone = [
        BitView(
            name=group.name + UNDONE,
            groups=(index,),
            bits=recovery.inputs.astype(np.float32),
        )
        for index, (group, recovery) in enumerate(zip(groups, recoveries, strict=True))
        if recovery.inputs is not None
    ]
    if undone and len(groups) > 1:
        parts = [
            recovery.inputs.astype(np.float32) if recovery.inputs is not None else view.bits
            for recovery, view in zip(recoveries, views[: len(groups)], strict=True)
        ]
        undone.append(
            BitView(
                name=WHOLE_RECORD + UNDONE,
                groups=tuple(range(len(groups))),
                bits=np.concatenate(parts, axis=1),
            )
        )
    return recoveries, tuple(undone)


def _group_bits(records: EncodedRecords) -> tuple[npt.NDArray[np.float32], ...]:
    return tuple(bit_matrix(records.group(index)) for index in range(len(records.layout.groups)))


def _known_pairs(
    truth: Truth, reference: Reference, count: int, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """``count`` (encoded row, reference row) pairs of people in both, drawn at random."""
    first_row: dict[object, int] = {}
    for row, person in enumerate(reference.overlap_people):
        first_row.setdefault(person, row)
    seen: set[object] = set()
    pairs = []
    for row, person in enumerate(truth.people):
        if person in first_row and person not in seen:
            seen.add(person)
            pairs.append((row, first_row[person]))
    if not pairs or count <= 0:
        return np.zeros((0, 2), dtype=np.intp)
    chosen = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    return np.array([pairs[index] for index in sorted(chosen.tolist())], dtype=np.intp)


def _graph_attributes(
    matching: Matching,
    reference_labels: Mapping[Attribute, Labels],
    table: AttributeTable,
    *,
    attack: AttackName,
    view: str,
) -> AttributeAttackResult:
    """Attribute values disclosed by the claimed matches: the matched plaintext's values."""
    predicted: dict[Attribute, Labels] = {}
    rows = matching.target[matching.claimed]
    columns = matching.reference[matching.claimed]
    for attribute, labels in reference_labels.items():
        guess = np.empty(table.records, dtype=object)
        guess[rows] = labels[columns]
        predicted[attribute] = guess
    scores = score_predictions(table, predicted, how="matched plaintext")
    return AttributeAttackResult(attack=attack, view=view, scores=tuple(scores))


def _attribute_attacks(
    view: BitView,
    records: EncodedRecords,
    reference: Reference,
    table: AttributeTable,
    known: npt.NDArray[np.intp],
    settings: AssessmentSettings,
) -> list[AttributeAttackResult]:
    schema = reference.schema
    field_names = [spec.name for spec in schema.fields]
    fields = records.fields_of(view.groups, field_names)
    wanted = settings.attacks
    results = []
    if AttackName.FREQUENCY in wanted and not view.name.endswith(UNDONE):
        # identical encodings are identical either way: the frequency attack gains nothing
        results.append(
            frequency_attack(
                records,
                schema,
                reference.population,
                table,
                group_indices=view.groups,
                view=view.name,
            )
        )
    needs_mining = {
        AttackName.PATTERN_MINING,
        AttackName.SIGNATURE_ORACLE,
        AttackName.SIGNATURE_INSIDER,
    }
    if not needs_mining & wanted:
        return results
    signatures = mine_signatures(view.bits, settings.mining)
    if AttackName.PATTERN_MINING in wanted:
        results.append(
            pattern_mining_attack(
                signatures,
                schema,
                fields,
                reference.population,
                table,
                view=view.name,
                settings=settings.patterns,
            )
        )
    if AttackName.SIGNATURE_ORACLE in wanted:
        results.append(oracle_signature_attack(view, signatures, table, settings.signature))
    if AttackName.SIGNATURE_INSIDER in wanted and len(known):
        results.append(insider_signature_attack(view, signatures, table, known[:, 0]))
    return results


def assess(
    clks: npt.NDArray[np.uint64],
    layout: ClkLayout,
    *,
    truth: Truth,
    reference: Reference,
    settings: AssessmentSettings = AssessmentSettings(),
) -> AttackReport:
    """Run every attack in ``settings`` on each field group and on the whole record."""
    records = EncodedRecords(clks=clks, layout=layout, group_fields=reference.group_fields)
    if len(records) != len(truth.rows):
        raise ValueError("truth needs one row per encoding")
    rng = np.random.default_rng(settings.seed)
    table = AttributeTable.of(reference.schema, truth.rows, min_support=settings.min_support)
    known = _known_pairs(truth, reference, settings.seeds, rng)
    views = bit_views(records)
    recoveries: tuple[LinearRecovery, ...] = ()
    undone: tuple[BitView, ...] = ()
    if settings.linear is not None:
        recoveries, undone = _undone_views(records, views, settings.linear)
    attribute_results: list[AttributeAttackResult] = []
    for view in (*views, *undone):
        attribute_results.extend(
            _attribute_attacks(view, records, reference, table, known, settings)
        )
    graph_results: list[GraphMatchResult] = []
    graph_attacks = {AttackName.GRAPH_SEEDED, AttackName.GRAPH_KEYLESS} & settings.attacks
    if graph_attacks and len(reference.overlap):
        shadow_count = max(settings.shadows, settings.keyless_shadows)
        shadows = tuple(
            _group_bits(reference.encode(reference.overlap, rng.bytes(32)))
            for _ in range(shadow_count)
        )
        sides = GraphSides(target=_group_bits(records), shadows=shadows)
        keyless_sides = GraphSides(target=sides.target, shadows=shadows[: settings.keyless_shadows])
        seeded_sides = GraphSides(target=sides.target, shadows=shadows[: settings.shadows])
        reference_labels = attribute_labels(reference.schema, reference.overlap)
        people = list(truth.people)
        overlap_people = list(reference.overlap_people)
        for view in views:
            runs: list[tuple[AttackName, Matching, npt.NDArray[np.intp]]] = []
            if AttackName.GRAPH_SEEDED in graph_attacks and len(known):
                runs.append(
                    (
                        AttackName.GRAPH_SEEDED,
                        seeded_matching(seeded_sides, view.groups, known, settings.graph),
                        known,
                    )
                )
            if AttackName.GRAPH_KEYLESS in graph_attacks:
                runs.append(
                    (
                        AttackName.GRAPH_KEYLESS,
                        keyless_matching(keyless_sides, view.groups, settings.graph),
                        np.zeros((0, 2), dtype=np.intp),
                    )
                )
            for attack, matching, seeds in runs:
                graph_results.append(
                    score_matching(
                        matching, people, overlap_people, seeds=seeds, view=view.name, attack=attack
                    )
                )
                attribute_results.append(
                    _graph_attributes(
                        matching, reference_labels, table, attack=attack, view=view.name
                    )
                )
    return AttackReport(
        views=tuple(view.name for view in (*views, *undone)),
        attribute_results=tuple(attribute_results),
        graph_results=tuple(graph_results),
        linear=recoveries,
    )
