"""What the attack tests feed :func:`bloomlink.attacks.assess`: synth extracts normalised
through the shipped department mappings, encoded by the real encoder.

A test pinning a schema against the attacks (issue 19) can use it as it stands:

    inputs = attack_inputs(schema)
    report = inputs.assess(frozenset(AttackName))
    assert report.worst_attribute_min_pr < 0.6 and report.graph_reidentified_share < 0.05
"""

from __future__ import annotations

from dataclasses import dataclass

from bloomlink.attacks import (
    AssessmentSettings,
    AttackName,
    AttackReport,
    EncodedRecords,
    Reference,
    RowEncoder,
    Truth,
    assess,
    schema_encoder,
)
from bloomlink.attacks.views import Row
from bloomlink.synth import SynthConfig, generate
from party.mapping import shipped_mapping
from protocol.errors import RecordError
from protocol.schema import LinkageSchema

PROJECT_KEY = bytes(range(32))


@dataclass(frozen=True, slots=True, kw_only=True)
class Extract:
    rows: list[Row]
    people: list[object]


def extracts(
    schema: LinkageSchema, departments: tuple[str, ...], *, records: int, seed: int
) -> list[Extract]:
    """Synth extracts (difficulty medium) normalised through their shipped mappings, bad
    values blanked as an encoder run does."""
    result = generate(
        SynthConfig(departments=departments, records=records, difficulty="medium", seed=seed)
    )
    out = []
    for extract in result.departments:
        bound = shipped_mapping(extract.name).bind(schema, extract.layout.columns)
        rows: list[Row] = []
        for number, row in enumerate(extract.rows(), start=1):
            blanked: list[RecordError] = []
            rows.append(bound.normalise(row, row_number=number, blanked=blanked))
        out.append(Extract(rows=rows, people=extract.people.tolist()))
    return out


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AttackInputs:
    """The MoJ file encoded under the project key; the DfE file (half the same people) and
    another population as the attacker's plaintext."""

    schema: LinkageSchema
    target: Extract
    overlap: Extract
    population: Extract
    encoder: RowEncoder
    encoded: EncodedRecords

    def assess(
        self,
        attacks: frozenset[AttackName],
        *,
        encoded: EncodedRecords | None = None,
        encoder: RowEncoder | None = None,
    ) -> AttackReport:
        """Every attack in ``attacks`` on ``encoded`` (default: the real encodings)."""
        chosen = encoded if encoded is not None else self.encoded
        return assess(
            chosen.clks,
            chosen.layout,
            truth=Truth(rows=self.target.rows, people=self.target.people),
            reference=Reference(
                schema=self.schema,
                population=self.population.rows,
                overlap=self.overlap.rows,
                overlap_people=self.overlap.people,
                encode=encoder if encoder is not None else self.encoder,
                group_fields=chosen.group_fields,
            ),
            settings=AssessmentSettings(
                attacks=attacks, seed=7, shadows=4, keyless_shadows=2, min_support=15
            ),
        )


def attack_inputs(
    schema: LinkageSchema, *, records: int = 1000, population: int = 2500, seed: int = 3
) -> AttackInputs:
    target, overlap = extracts(schema, ("moj", "dfe"), records=records, seed=seed)
    (others,) = extracts(schema, ("dfe",), records=population, seed=seed + 1)
    encoder = schema_encoder(schema, project_id="attack-test")
    return AttackInputs(
        schema=schema,
        target=target,
        overlap=overlap,
        population=others,
        encoder=encoder,
        encoded=encoder(target.rows, PROJECT_KEY),
    )
