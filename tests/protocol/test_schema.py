"""Linkage schema: validation lists every problem at once; the fingerprint tracks exactly what
changes an encoding."""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from protocol import normalisation
from protocol.errors import SchemaError
from protocol.schema import (
    default_schema,
    load_schema,
    load_schema_identity,
    parse_schema,
    single_clk_schema,
)


def default_document() -> dict[str, Any]:
    text = resources.files("protocol").joinpath("data/single_clk_schema.toml").read_text("utf-8")
    return tomllib.loads(text)


FIELDS = ["forename", "surname", "date_of_birth", "sex", "postcode"]


def test_default_schema_loads_hardened_in_every_group() -> None:
    schema = default_schema()
    assert [spec.name for spec in schema.fields] == FIELDS
    assert schema.grouped
    groups = schema.layout.groups
    assert [group.name for group in groups] == ["name", "birth", "postcode"]
    # Every group diffused, and not linearly (docs/encoding.md, docs/attacks.md: a linear
    # diffusion is undone by linear algebra): no group may go out unhardened or linear.
    assert all(group.hardening.startswith("nonlinear-diffusion:") for group in groups)
    assert schema.encoded_bits == sum(group.bits for group in groups) == 2560
    assert len(schema.fingerprint) == 32


def test_single_clk_schema_loads() -> None:
    schema = single_clk_schema()
    assert [spec.name for spec in schema.fields] == FIELDS
    assert not schema.grouped
    assert schema.clk_bits == 1024 and schema.encoded_bits == 1024
    assert schema.fingerprint != default_schema().fingerprint


def test_every_problem_is_reported_at_once() -> None:
    document = {
        "schema_version": 1,
        "name": "bad",
        "clk_bits": 1000,
        "hardening": "xor-fold",
        "colour": "red",
        "fields": [
            {"name": "a", "kind": "weird", "tokens": [{"method": "ngram", "bits": 10}]},
            {"name": "b", "kind": "sex", "tokens": [{"method": "ngram", "bits": 10}]},
            {"name": "c", "kind": "date", "tokens": [{"method": "date_parts"}]},
            {"name": "d", "kind": "sex", "tokens": [{"method": "exact", "bits": 5}], "x": 1},
            {"name": "d", "kind": "sex", "tokens": [{"method": "exact", "bits": 5}]},
            {"name": "e", "kind": "person_name", "tokens": []},
        ],
    }
    with pytest.raises(SchemaError) as raised:
        parse_schema(document, source="bad.toml")
    problems = raised.value.problems
    expected = [
        "unknown key 'colour'",
        "clk_bits: must be a multiple of 64",
        "xor-fold needs clk_bits to be a multiple of 128",
        "field 'a'.kind: must be one of",
        "'ngram' does not apply to a sex field",
        "field 'c'.tokens[0]: give exactly one of 'bits'",
        "field 'd': unknown key 'x'",
        "field 'd': is defined twice",
        "field 'e'.tokens: must list at least one tokeniser",
    ]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment
    assert len(problems) == len(expected)
    assert str(raised.value).startswith(f"{len(expected)} problems in linkage schema in bad.toml")


def test_xor_fold_needs_a_multiple_of_128_on_its_own() -> None:
    document = default_document() | {"clk_bits": 192, "hardening": "xor-fold"}
    with pytest.raises(SchemaError) as raised:
        parse_schema(document)
    assert raised.value.problems == ("hardening: xor-fold needs clk_bits to be a multiple of 128",)
    assert parse_schema(default_document() | {"clk_bits": 256, "hardening": "xor-fold"})


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"clk_bits": 32}, "between 64 and 65536"),
        ({"clk_bits": True}, "whole number"),
        ({"hashing": "md5"}, "hashing: must be one of"),
        ({"schema_version": 3}, "schema_version: must be one of 1, 2"),
        ({"name": "Has Spaces"}, "name: must be a lower-case label"),
        ({"fields": []}, "fields: must list at least one field"),
    ],
)
def test_single_problems(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SchemaError) as raised:
        parse_schema(default_document() | change)
    assert any(fragment in problem for problem in raised.value.problems)


def test_token_and_field_problems() -> None:
    document = default_document()
    document["fields"][0]["tokens"][0] = {"method": "ngram", "size": 9, "bits": 10, "bogus": 1}
    document["fields"][1]["nicknames"] = "yes"
    document["fields"][2]["nicknames"] = True
    document["fields"][3]["key_group"] = "Bad Group"
    document["fields"][4]["max_length"] = 0
    with pytest.raises(SchemaError) as raised:
        parse_schema(document)
    text = " | ".join(raised.value.problems)
    for fragment in (
        "field 'forename'.tokens[0]: unknown key 'bogus'",
        "field 'forename'.tokens[0].size: must be between 1 and 5",
        "field 'surname'.nicknames: must be true or false",
        "field 'date_of_birth'.nicknames: applies only to person_name fields",
        "field 'sex'.key_group: must be a lower-case label",
        "field 'postcode'.max_length: must be between 1 and 1000",
    ):
        assert fragment in text
    assert len(raised.value.problems) == 6


def test_fingerprint_ignores_key_order_whitespace_and_description(tmp_path: Path) -> None:
    base = single_clk_schema()
    reordered = dict(reversed(list(default_document().items())))
    reordered["fields"] = [dict(reversed(list(field.items()))) for field in reordered["fields"]]
    assert parse_schema(reordered).fingerprint == base.fingerprint
    assert (
        parse_schema(default_document() | {"description": "something else"}).fingerprint
        == base.fingerprint
    )
    text = resources.files("protocol").joinpath("data/single_clk_schema.toml").read_text("utf-8")
    spaced = tmp_path / "spaced.toml"
    spaced.write_text("\n\n# a comment\n" + text.replace(" = ", "   =   "), encoding="utf-8")
    assert load_schema(spaced).fingerprint == base.fingerprint


def test_json_and_toml_forms_give_the_same_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(default_document(), indent=2), encoding="utf-8")
    assert load_schema(path).fingerprint == single_clk_schema().fingerprint


def test_json_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    text = json.dumps(default_document())
    path = tmp_path / "schema.json"
    path.write_text(text[:-1] + ', "clk_bits": 2048}', encoding="utf-8")
    with pytest.raises(SchemaError, match="'clk_bits' is given more than once"):
        load_schema(path)


def _changed(edit: Any) -> bytes:
    document = copy.deepcopy(default_document())
    edit(document)
    return parse_schema(document).fingerprint


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(clk_bits=2048),
        lambda d: d.update(hashing="blake2b"),
        lambda d: d.update(hardening="balance"),
        lambda d: d["fields"][0]["tokens"][0].update(bits=151),
        lambda d: d["fields"][0]["tokens"][0].update(size=3),
        lambda d: d["fields"][0]["tokens"][0].update(positional=True),
        lambda d: d["fields"][0].update(nicknames=False),
        lambda d: d["fields"][0].update(key_group="names"),
        lambda d: d["fields"][1].update(kind="free_text"),
        lambda d: d["fields"].reverse(),
        lambda d: d["fields"].pop(),
    ],
)
def test_fingerprint_changes_with_anything_that_changes_encoding(edit: Any) -> None:
    assert _changed(edit) != single_clk_schema().fingerprint


@pytest.mark.parametrize("make", [default_schema, single_clk_schema], ids=["grouped", "single"])
def test_fingerprint_covers_normaliser_version_and_nickname_table(make: Any) -> None:
    """The fingerprint is the digest of the canonical form, and that form carries the
    normaliser version and the nickname table's digest (read when computed, so a new
    normaliser or table changes every fingerprint that depends on it)."""
    schema = make()
    canonical = schema.canonical()
    assert canonical["normaliser"] == normalisation.NORMALISER_VERSION
    assert any(spec.nicknames for spec in schema.fields)
    assert canonical["nickname_table_sha256"] == normalisation.nickname_table_digest()
    assert schema.fingerprint == hashlib.sha256(schema.canonical_json()).digest()


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        load_schema(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("clk_bits = = 3", encoding="utf-8")
    with pytest.raises(SchemaError, match="not valid toml"):
        load_schema(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(SchemaError, match="cannot read file"):
        load_schema(binary)


def test_first_word_tokens_ignore_middle_names_and_stay_out_of_older_fingerprints() -> None:
    from protocol.tokens import tokenise

    def document(words: str | None, method: str = "ngram", kind: str = "person_name") -> dict:
        token = {"method": method, "bits": 100}
        if words is not None:
            token["words"] = words
        return {
            "schema_version": 1,
            "name": "words",
            "fields": [{"name": "forename", "kind": kind, "tokens": [token]}],
        }

    first = parse_schema(document("first")).fields[0].tokens[0]
    assert tokenise("john paul", first) == tokenise("john", first)
    whole = parse_schema(document(None)).fields[0].tokens[0]
    assert tokenise("john paul", whole) != tokenise("john", whole)
    assert "words" not in whole.canonical() and first.canonical()["words"] == "first"
    assert parse_schema(document("all")).fingerprint == parse_schema(document(None)).fingerprint
    with pytest.raises(SchemaError, match="words"):
        parse_schema(document("last"))
    with pytest.raises(SchemaError, match="date_parts"):
        parse_schema(document("first", method="date_parts", kind="date"))


# -- schema version 2: field groups, per-group hardening, salted tokens --------------------

ROOT = Path(__file__).resolve().parents[2]


def grouped_document() -> dict[str, Any]:
    return tomllib.loads(
        (ROOT / "benchmarks/schemas/grouped_diffusion_w3_blip_p02.toml").read_text()
    )


def test_a_grouped_schema_has_its_layout_and_a_canonical_form_without_clk_bits() -> None:
    schema = parse_schema(grouped_document())
    assert schema.grouped and schema.schema_version == 2
    assert schema.input_layout.geometry == (("name", 512), ("birth", 512), ("postcode", 256))
    assert [group.hardening for group in schema.layout.groups] == [
        "diffusion:width=3,output_bits=512+blip:flip_per_65536=1311",
        "diffusion:width=3,output_bits=512+blip:flip_per_65536=1311",
        "diffusion:width=3,output_bits=256+blip:flip_per_65536=1311",
    ]
    canonical = schema.canonical()
    assert "clk_bits" not in canonical and "hardening" not in canonical
    assert canonical["groups"][0]["hardening"] == [
        {"method": "diffusion", "width": 3, "output_bits": 512},
        {"method": "blip", "flip_per_65536": 1311},
    ]
    sex = next(field for field in canonical["fields"] if field["name"] == "sex")
    assert sex["group"] == "birth" and sex["tokens"][0]["salt"] == "date_of_birth"
    assert [schema.group_index(index) for index in range(5)] == [0, 0, 1, 1, 2]


def test_the_fingerprint_covers_groups_and_hardening() -> None:
    base = parse_schema(grouped_document()).fingerprint
    for change in (
        lambda d: d["groups"][0].update(clk_bits=576),
        lambda d: d["groups"][1].update(hardening="none"),
        lambda d: d["groups"][2]["hardening"][1].update(flip_probability=0.03),
        lambda d: d["fields"][3]["tokens"][0].pop("salt"),
        lambda d: d["fields"][2].update(group="name"),
    ):
        document = grouped_document()
        change(document)
        assert parse_schema(document).fingerprint != base


def test_blip_by_epsilon_is_randomised_response() -> None:
    document = grouped_document()
    document["groups"][0]["hardening"] = {"method": "blip", "epsilon": 3.0}
    schema = parse_schema(document)
    assert (
        schema.layout.groups[0].hardening == "blip:flip_per_65536=3108"
    )  # 65536 / (1 + e^3) = 3107.8


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda d: d["groups"][0].update(hardening={"method": "diffusion", "width": 1}),
            "group 'name'.hardening.width: must be at least 2",
        ),
        (
            lambda d: d["groups"][0].update(
                hardening={"method": "diffusion", "width": 3, "output_bits": 192}
            ),
            "group 'name'.hardening.output_bits: must be at least half",
        ),
        (
            lambda d: d["groups"][1].update(hardening={"method": "blip", "flip_probability": 0}),
            "group 'birth'.hardening.flip_probability: must be above 0",
        ),
        (
            lambda d: d["groups"][1].update(hardening={"method": "blip", "epsilon": 50}),
            "group 'birth'.hardening.epsilon: gives under 1 flip in 65536",
        ),
        (
            lambda d: d["groups"][1].update(hardening={"method": "blip"}),
            "exactly one of 'flip_probability' or 'epsilon'",
        ),
        (
            lambda d: d["groups"][2].update(hardening={"method": "diffusion", "depth": 2}),
            "group 'postcode'.hardening: unknown key 'depth'",
        ),
        (
            lambda d: d["groups"][2].update(hardening="shuffle"),
            "group 'postcode'.hardening.method: must be one of",
        ),
        (
            lambda d: d["fields"][3]["tokens"][0].update(salt="sex"),
            "field 'sex'.tokens[0].salt: a field cannot salt its own tokens",
        ),
        (
            lambda d: d["fields"][3]["tokens"][0].update(salt="birth_place"),
            "field 'sex'.tokens[0].salt: 'birth_place' is not a field",
        ),
        (lambda d: d["fields"][4].update(group="address"), "'address' is not a declared group"),
        (lambda d: d["fields"][4].pop("group"), "field 'postcode'.group: must name one of"),
        (lambda d: d.update(clk_bits=1024), "clk_bits: in schema_version 2 each [[groups]]"),
        (lambda d: d.update(hardening="balance"), "hardening: in schema_version 2 each"),
        (lambda d: d["groups"][1].update(name="name"), "group 'name': is defined twice"),
        (
            lambda d: d["groups"][0].update(clk_bits=100),
            "group 'name'.clk_bits: must be a multiple",
        ),
        (lambda d: d.update(groups=[]), "groups: must list 1 to 16 field groups"),
    ],
)
def test_grouped_schema_problems_name_the_parameter(change: Any, fragment: str) -> None:
    document = grouped_document()
    change(document)
    with pytest.raises(SchemaError) as raised:
        parse_schema(document)
    assert any(fragment in problem for problem in raised.value.problems), raised.value.problems


def test_grouped_schema_problems_are_collected_and_raised_once() -> None:
    document = grouped_document()
    document["groups"][0]["hardening"] = {"method": "diffusion", "width": 1}
    document["groups"][1]["hardening"] = {"method": "blip", "flip_probability": 0.0}
    document["fields"][3]["tokens"][0]["salt"] = "sex"
    with pytest.raises(SchemaError) as raised:
        parse_schema(document)
    assert len(raised.value.problems) == 3


def test_version_1_refuses_version_2_keys() -> None:
    document = default_document()
    document["fields"][3]["tokens"][0]["salt"] = "date_of_birth"
    document["fields"][0]["group"] = "name"
    with pytest.raises(SchemaError) as raised:
        parse_schema(document)
    problems = " ".join(raised.value.problems)
    assert "salt: needs schema_version 2" in problems and "unknown key 'group'" in problems


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks/schemas").glob("grouped*.toml")))
def test_the_candidate_schemas_load(path: Path) -> None:
    schema = load_schema(path)
    assert schema.grouped and schema.hashing == "blake2b"
    assert schema.layout.names == ("name", "birth", "postcode")


@pytest.mark.parametrize("name", ["schema.json", "schema.toml"])
@pytest.mark.parametrize("shipped", ["default_schema.toml", "single_clk_schema.toml"])
def test_schema_check_output_fed_back_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, shipped: str
) -> None:
    """`schema check --json > schema.json`, then `--schema schema.json`: the summary has no
    field rules, so the schema loader says what the file is (it listed twelve unknown-key
    problems); the fingerprint-and-layout reader (project create, spine create) takes it."""
    from bloomlink.cli import main

    source = tmp_path / shipped
    source.write_bytes((resources.files("protocol") / "data" / shipped).read_bytes())
    schema = load_schema(source)
    assert main(["schema", "check", "--schema", str(source), "--json"]) == 0
    path = tmp_path / name
    path.write_text(capsys.readouterr().out, encoding="utf-8")
    with pytest.raises(SchemaError) as caught:
        load_schema(path)
    assert len(caught.value.problems) == 1
    assert "output of bloomlink schema check --json" in caught.value.message
    identity = load_schema_identity(path)
    assert identity.fingerprint == schema.fingerprint
    assert identity.layout == (schema.layout if schema.grouped else None)
    assert load_schema_identity(source) == identity
