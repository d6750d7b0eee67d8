"""Spine: keys that survive a refresh, a new department, merges, refusals, storage at rest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from linkage_unit.link_keys import PartyLinkKeys
from linkage_unit.matching import MatchSettings
from linkage_unit.spine import (
    SpineSettings,
    SpineState,
    SpineStore,
    SpineUpload,
    link_into_spine,
    read_spine_key,
)
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    PreconditionError,
)
from protocol.messages import LinkKeyMode
from tests.strategies import noisy_copies, random_clks

SCHEMA = "ab" * 32
OTHER_SCHEMA = "cd" * 32
KCV = "0123456789abcdef"
SETTINGS = MatchSettings(threshold=0.8)


def _settings(**overrides: object) -> SpineSettings:
    values: dict[str, object] = {
        "name": "people",
        "parties": ("moj", "dfe", "dwp"),
        "schema_fingerprint": SCHEMA,
    }
    values.update(overrides)
    return SpineSettings(**values)  # type: ignore[arg-type]


def _upload(party: str, clks: npt.NDArray[np.uint64], *, kcv: str = KCV) -> SpineUpload:
    return SpineUpload(party=party, schema_fingerprint=SCHEMA, kcv=kcv, clks=clks)


def _key_by_row(keys: PartyLinkKeys) -> dict[int, str]:
    return dict(zip(keys.positions, keys.link_keys, strict=True))


def _people(seed: int, count: int) -> npt.NDArray[np.uint64]:
    return random_clks(np.random.default_rng(seed), count)


def _noisy(seed: int, clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    return noisy_copies(np.random.default_rng(seed), clks, 0.02)


def _release_one(
    truth: npt.NDArray[np.uint64],
) -> tuple[SpineState, Mapping[str, PartyLinkKeys]]:
    result = link_into_spine(
        SpineState(settings=_settings()),
        [_upload("moj", _noisy(1, truth[:80])), _upload("dfe", _noisy(2, truth[20:100]))],
        SETTINGS,
        run_id="r1",
    )
    return result.state, result.keys


def test_a_refresh_keeps_each_persons_key_and_new_people_get_new_ones() -> None:
    truth = _people(0, 140)
    state, first = _release_one(truth)
    assert state.person_count == 100
    assert state.settings.kcv == KCV  # bound by the first run
    moj_first = _key_by_row(first["moj"])  # row i is person i
    # Release 2: people 10..79 re-extracted with new errors, 100..139 new, 0..9 gone.
    release_two = np.concatenate([_noisy(3, truth[10:80]), _noisy(4, truth[100:140])])
    result = link_into_spine(state, [_upload("moj", release_two)], SETTINGS, run_id="r2")
    moj_second = _key_by_row(result.keys["moj"])
    kept = sum(moj_second[row] == moj_first[row + 10] for row in range(70))
    assert kept == 70
    assert len(set(moj_second.values())) == 110  # no two people share a key
    assert not set(moj_second[row] for row in range(70, 110)) & set(moj_first.values())
    assert result.new_people == 40 and result.matched_people == 70
    assert result.state.person_count == 140


def test_a_new_department_links_to_people_of_both_earlier_parties() -> None:
    truth = _people(0, 140)
    state, first = _release_one(truth)
    dwp = _noisy(5, truth[0:100:5])  # people 0, 5, ..., 95
    result = link_into_spine(state, [_upload("dwp", dwp)], SETTINGS, run_id="r2")
    # per_party keys: dwp gets its own key per person, linked through the spine, so the same
    # spine person holds the moj and dfe keys issued in release 1.
    dwp_keys = _key_by_row(result.keys["dwp"])
    moj_first = _key_by_row(first["moj"])
    for row in range(20):
        person = row * 5
        holders = [keys for keys in result.state.person_keys if keys.get("dwp") == dwp_keys[row]]
        assert len(holders) == 1
        if person < 80:
            assert holders[0]["moj"] == moj_first[person]
    assert result.new_people == 0


def test_shared_mode_gives_every_party_the_persons_one_key() -> None:
    truth = _people(7, 30)
    state = SpineState(settings=_settings(link_key_mode=LinkKeyMode.SHARED))
    first = link_into_spine(
        state,
        [_upload("moj", _noisy(1, truth)), _upload("dfe", _noisy(2, truth))],
        SETTINGS,
        run_id="r1",
    )
    assert _key_by_row(first.keys["moj"]) == _key_by_row(first.keys["dfe"])
    second = link_into_spine(first.state, [_upload("dwp", _noisy(3, truth))], SETTINGS, run_id="r2")
    assert _key_by_row(second.keys["dwp"]) == _key_by_row(first.keys["moj"])


def test_a_merge_keeps_old_keys_valid_through_the_crosswalk() -> None:
    truth = _people(0, 1)
    generator = np.random.default_rng(11)
    # Release 1 at a strict cut: two noisy extracts of one person stay two spine people.
    copies = noisy_copies(generator, np.repeat(truth, 2, axis=0), 0.08)
    state = link_into_spine(
        SpineState(settings=_settings(max_merge_share=0.5)),
        [_upload("moj", copies)],
        MatchSettings(threshold=0.97, deduplicated=frozenset({"moj"})),
        run_id="r1",
    ).state
    assert state.person_count == 2
    before = [dict(keys) for keys in state.person_keys]
    # Release 2 at the usual cut shows them to be one person.
    result = link_into_spine(
        state,
        [_upload("dfe", noisy_copies(generator, truth, 0.04))],
        MatchSettings(threshold=0.6),
        run_id="r2",
    )
    assert len(result.merges) == 1
    assert result.state.person_count == 1
    # Issued keys never change: person 0 keeps its moj key, person 1's maps to it.
    assert result.state.person_keys[0]["moj"] == before[0]["moj"]
    assert result.state.person_keys[1]["moj"] == before[1]["moj"]
    assert result.state.crosswalk().rows == ((before[1]["moj"], before[0]["moj"]),)
    assert [event.kind for event in result.state.events] == ["merge"]


def test_a_run_merging_too_much_of_the_spine_fails_before_any_key() -> None:
    truth = _people(0, 20)
    state = link_into_spine(
        SpineState(settings=_settings(max_merge_share=0.05)),
        [_upload("moj", truth)],
        MatchSettings(threshold=0.8, deduplicated=frozenset({"moj"})),
        run_id="r1",
    ).state
    # One dfe record that matches everyone at a permissive cut: a broken extract.
    everything = np.bitwise_or.reduce(truth, axis=0)[None, :]
    with pytest.raises(PreconditionError, match="max_merge_share"):
        link_into_spine(
            state, [_upload("dfe", everything)], MatchSettings(threshold=0.1), run_id="r2"
        )


def test_refusals_before_any_comparison() -> None:
    state, _ = _release_one(_people(0, 140))
    clks = _people(9, 5)
    with pytest.raises(PreconditionError, match="not listed"):
        link_into_spine(state, [_upload("hmrc", clks)], SETTINGS, run_id="r")
    with pytest.raises(CompatibilityError, match="KCV") as raised:
        link_into_spine(state, [_upload("moj", clks, kcv="f" * 16)], SETTINGS, run_id="r")
    assert raised.value.party == "moj"
    other = SpineUpload(party="moj", schema_fingerprint=OTHER_SCHEMA, kcv=KCV, clks=clks)
    with pytest.raises(CompatibilityError, match="schema"):
        link_into_spine(state, [other], SETTINGS, run_id="r")
    with pytest.raises(CompatibilityError, match="CLK lengths"):
        link_into_spine(state, [_upload("moj", clks[:, :8].copy())], SETTINGS, run_id="r")
    with pytest.raises(InvalidRequestError):
        link_into_spine(state, [], SETTINGS, run_id="r")


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidRequestError, match="reserved"):
        _settings(parties=("moj", "spine"))
    with pytest.raises(InvalidRequestError, match="fingerprint"):
        _settings(schema_fingerprint="nothex")
    with pytest.raises(InvalidRequestError, match="max_merge_share"):
        _settings(max_merge_share=2.0)


def test_the_store_round_trips_encrypted_and_refuses_a_wrong_key(tmp_path: Path) -> None:
    key = bytes(range(32))
    store = SpineStore(tmp_path, key)
    assert "redacted" in repr(store)
    store.create(_settings())
    with pytest.raises(AlreadyExistsError):
        store.create(_settings())
    state, _ = _release_one(_people(0, 140))
    store.save(state)
    loaded = store.load("people")
    assert loaded.settings == state.settings
    assert loaded.person_keys == state.person_keys
    assert np.array_equal(loaded.encodings, state.encodings)
    assert np.array_equal(loaded.record_person, state.record_person)
    raw = (tmp_path / "people.spine").read_bytes()
    assert state.person_keys[0]["moj"].encode() not in raw  # keys are not stored in clear
    with pytest.raises(ConfigurationError, match="cannot be decrypted"):
        SpineStore(tmp_path, bytes(32)).load("people")
    with pytest.raises(NotFoundError):
        store.load("nobody")


def test_the_spine_key_file_must_be_private_and_32_bytes(tmp_path: Path) -> None:
    path = tmp_path / "spine.key"
    path.write_bytes(bytes(32))
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        read_spine_key(path)
    path.chmod(0o600)
    assert read_spine_key(path) == bytes(32)
    path.write_bytes(bytes(5))
    with pytest.raises(ConfigurationError, match="32 bytes"):
        read_spine_key(path)
