"""An untrusted Fellegi-Sunter model links nothing: a duplicate-free extract deduplicated
alone, where EM took the pairs sharing a birth date for the matches (issue 14, release 2's
own deduplication)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bloomlink.report_html import render_report
from bloomlink.synth import SynthConfig, generate
from bloomlink.synth.generation import extract_people
from linkage_unit.matching import MatchSettings, link
from linkage_unit.report import RunReport, build_report
from linkage_unit.run import spine_link_result
from linkage_unit.spine import SpineSettings, SpineState, SpineUpload, link_into_spine
from party.mapping import shipped_mapping
from protocol.encoding import ClkEncoder
from protocol.errors import RecordError
from protocol.schema import default_schema
from protocol.secret import LinkageSecret


def _release_two() -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """MoJ's release 2 encoded under the fixed secret, and each record's true person."""
    # benchmarks/refresh.py's release 2 of MoJ at 10k: 9,000 people re-extracted and 1,000
    # new, none twice. Which model EM settles on depends on the linkage secret; this fixed
    # secret is one of the one in eight (at 10k) that gave a model whose matches were the
    # pairs sharing a birth date (name and postcode no better than random), joining 4,134
    # different people. A fresh secret would usually give a trusted model and test nothing.
    synth = generate(
        SynthConfig(
            departments=("moj", "dfe", "hmpps"), records=10_000, overlap=0.5,
            difficulty="medium", seed=14,
        )
    )  # fmt: skip
    moj, dfe, hmpps = synth.departments
    rng = np.random.default_rng(15)
    staying = rng.choice(moj.people, size=9_000, replace=False)
    unseen = hmpps.people[~np.isin(hmpps.people, np.concatenate([moj.people, dfe.people]))]
    release = extract_people(
        synth.population,
        rng.permutation(np.concatenate([staying, unseen[:1_000]])),
        department="moj",
        difficulty="medium",
        rng=rng,
    )
    assert len(np.unique(release.people)) == len(release.people)  # no duplicates to find
    schema = default_schema()
    bound = shipped_mapping("moj").bind(schema, release.layout.columns)
    rows = []
    for number, row in enumerate(release.rows(), start=1):
        blanked: list[RecordError] = []
        rows.append(bound.normalise(row, row_number=number, blanked=blanked))
    secret = LinkageSecret(hashlib.sha256(b"spinemodel-1").digest())
    clks = ClkEncoder(schema, secret, project_id="spine:bench").encode_many(rows)
    return clks, release.people


def test_a_model_fitted_to_look_alikes_on_one_group_links_nothing(tmp_path: Path) -> None:
    clks, people_of = _release_two()
    schema = default_schema()
    result = link(
        {"moj": clks},
        MatchSettings(deduplicated=frozenset({"moj"}), blocking_seed=14),
        layout=schema.layout,
    )
    model = result.statistics.model
    assert model is not None
    # The scenario: one group separates the model's matches, the others do not.
    assert sorted(value >= 0.5 for value in model.separation()) == [False, False, True]
    assert result.statistics.untrusted_models == ("moj",)
    people: dict[int, set[int]] = defaultdict(set)
    for cluster, person in zip(result.clusters["moj"].tolist(), people_of.tolist(), strict=True):
        people[cluster].add(person)
    assert all(len(group) == 1 for group in people.values())
    assert result.linked_record_count == 0
    # The operator's report names it (else it reads as a run that found few matches), and
    # keeps it through storage; the rendered page and the report command warn.
    report = build_report(result, {"moj": clks}, schema.layout)
    assert report.untrusted_models == ("moj",)
    assert RunReport.from_json(report.to_json()).untrusted_models == ("moj",)
    render_report("r1", report.to_dict(), tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "id='untrusted'" in page and "model of moj was not trusted" in page


def test_a_spine_run_keeps_the_untrusted_model_for_its_report() -> None:
    # The same release deduplicated into an empty spine: its own model is the one above.
    clks, _ = _release_two()
    schema = default_schema()
    outcome = link_into_spine(
        SpineState(settings=SpineSettings(name="people", parties=("moj",),
                                          schema_fingerprint="ab" * 32)),
        [SpineUpload(party="moj", schema_fingerprint="ab" * 32, kcv="0123456789abcdef",
                     clks=clks)],
        MatchSettings(deduplicated=frozenset({"moj"}), blocking_seed=14),
        run_id="r1",
        layout=schema.layout,
    )  # fmt: skip
    assert outcome.untrusted_models == ("moj",)
    result = spine_link_result(outcome)
    assert build_report(result).untrusted_models == ("moj",)
