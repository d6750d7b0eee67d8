"""The attacks have teeth: on today's unhardened default schema they find what issue 19
reports (sex from a correlated bit set; re-identification by seeded graph matching), and on a
clearly protected control (random bits, as many as each real encoding has) they find nothing.

Short form of benchmarks/attacks.py (which runs 3,000 records): synth data through the
shipped department mappings and the real encoder, fixed seeds, a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

from bloomlink.attacks import (
    WHOLE_RECORD,
    AssessmentSettings,
    AttackName,
    AttackReport,
    Attribute,
    EncodedRecords,
    Reference,
    RowEncoder,
    Truth,
    assess,
    schema_encoder,
)
from bloomlink.attacks.views import Row, bit_matrix
from bloomlink.synth import SynthConfig, generate
from party.mapping import shipped_mapping
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.errors import RecordError
from protocol.schema import LinkageSchema, default_schema

RECORDS = 1200
PROJECT_KEY = bytes(range(32))


@dataclass(frozen=True, slots=True, kw_only=True)
class Extract:
    rows: list[Row]
    people: list[object]


def _extracts(
    schema: LinkageSchema, departments: tuple[str, ...], records: int, seed: int
) -> list[Extract]:
    """Synth extracts normalised through their shipped mappings (bad values blanked)."""
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


@cache
def _data() -> tuple[Extract, Extract, Extract]:
    schema = default_schema()
    target, overlap = _extracts(schema, ("moj", "dfe"), RECORDS, seed=3)
    (population,) = _extracts(schema, ("dfe",), 3000, seed=4)
    return target, overlap, population


def _run(
    encoded: EncodedRecords,
    encoder: RowEncoder,
    attacks: frozenset[AttackName],
) -> AttackReport:
    target, overlap, population = _data()
    return assess(
        encoded.clks,
        encoded.layout,
        truth=Truth(rows=target.rows, people=target.people),
        reference=Reference(
            schema=default_schema(),
            population=population.rows,
            overlap=overlap.rows,
            overlap_people=overlap.people,
            encode=encoder,
            group_fields=encoded.group_fields,
        ),
        settings=AssessmentSettings(
            attacks=attacks, seed=7, shadows=4, keyless_shadows=2, min_support=15
        ),
    )


def _default_encoding() -> tuple[EncodedRecords, RowEncoder]:
    encoder = schema_encoder(default_schema(), project_id="attack-test")
    return encoder(_data()[0].rows, PROJECT_KEY), encoder


def _random_bits_like(encoded: EncodedRecords) -> EncodedRecords:
    """The protected control: every encoding replaced by random bits with as many set, so
    nothing carries over from a person to their bits or from one record to another."""
    generator = np.random.default_rng(11)
    bits = bit_matrix(encoded.clks)
    width = bits.shape[1]
    random = np.zeros_like(bits, dtype=bool)
    for row, count in enumerate(bits.sum(axis=1).astype(int).tolist()):
        random[row, generator.choice(width, size=count, replace=False)] = True
    packed = np.packbits(random, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    return EncodedRecords(clks=packed, layout=encoded.layout, group_fields=encoded.group_fields)


SIGNATURE = frozenset({AttackName.SIGNATURE_ORACLE})
SEEDED_GRAPH = frozenset({AttackName.GRAPH_SEEDED})


@cache
def _default_report() -> AttackReport:
    encoded, encoder = _default_encoding()
    return _run(encoded, encoder, frozenset(AttackName))


def test_signature_attack_identifies_sex_on_the_default_schema() -> None:
    report = _default_report()
    sex = report.best_by_attribute(AttackName.SIGNATURE_ORACLE, "record")[Attribute.SEX]
    assert sex.min_pr >= 0.9, sex
    months = report.identified(AttackName.SIGNATURE_ORACLE, "record")[Attribute.BIRTH_MONTH]
    assert months[0] >= 10, f"only {months[0]} of {months[1]} birth months identified"


def test_seeded_graph_matching_reidentifies_people_on_the_default_schema() -> None:
    report = _default_report()
    result = report.graph_result(AttackName.GRAPH_SEEDED, "record")
    assert result is not None and result.seeds == 50
    assert result.reidentified_share >= 0.3, result
    assert result.precision >= 0.8, result
    assert report.graph_reidentified_share == result.reidentified_share


def test_every_attack_finds_nothing_in_random_bits() -> None:
    encoded, encoder = _default_encoding()
    report = _run(_random_bits_like(encoded), encoder, frozenset(AttackName))
    assert report.worst_attribute_min_pr < 0.6, report.worst_attribute
    assert report.graph_reidentified_share < 0.05, report.graph_results
    assert {result.attack for result in report.attribute_results} == set(AttackName)


def test_grouped_encodings_are_attacked_per_group_and_as_a_whole() -> None:
    """A layout of two groups (the default CLK's halves stand in for encoding v2's groups):
    each group and the whole record are attacked, and the whole record still gives sex away."""
    encoded, encoder = _default_encoding()
    halves = ClkLayout(
        groups=(GroupLayout(name="low", bits=512), GroupLayout(name="high", bits=512))
    )
    fields = tuple(spec.name for spec in default_schema().fields)
    grouped = EncodedRecords(
        clks=encoded.clks, layout=halves, group_fields={"low": fields, "high": fields}
    )

    def split(rows: Sequence[Row], key: bytes) -> EncodedRecords:
        whole = encoder(rows, key)
        return EncodedRecords(clks=whole.clks, layout=halves, group_fields=grouped.group_fields)

    report = _run(grouped, split, SIGNATURE | SEEDED_GRAPH)
    assert report.views == ("low", "high", WHOLE_RECORD)
    whole = report.best_by_attribute(AttackName.SIGNATURE_ORACLE, WHOLE_RECORD)
    assert whole[Attribute.SEX].min_pr >= 0.9
    assert {result.view for result in report.graph_results} == {"low", "high", WHOLE_RECORD}
    seeded = report.graph_result(AttackName.GRAPH_SEEDED, WHOLE_RECORD)
    assert seeded is not None and seeded.reidentified_share >= 0.3


def test_the_report_headline_is_the_worst_of_its_results() -> None:
    report = _default_report()
    everything = [score.min_pr for result in report.attribute_results for score in result.scores]
    assert report.worst_attribute_min_pr == pytest.approx(max(everything))
    shares = [result.reidentified_share for result in report.graph_results]
    assert report.graph_reidentified_share == max(shares)
    assert {result.attack for result in report.graph_results} == {
        AttackName.GRAPH_KEYLESS,
        AttackName.GRAPH_SEEDED,
    }
    assert any(line.startswith("[record] pattern mining") for line in report.lines())
