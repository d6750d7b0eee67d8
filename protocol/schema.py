"""The linkage schema: which fields are encoded, how each is tokenised and weighted, how
long the CLK is and how it is hardened. Every party of a project encodes under the same schema; its fingerprint
(SHA-256 of the canonical form, including the normaliser version) travels with the CLKs so
the linkage unit can refuse to compare encodings made under different schemas.

A schema is a TOML (or JSON) file; docs/schema.md documents every key. Validation collects
every problem and raises one :class:`SchemaError` listing them all.

Version 1 encodes every field into one record-level CLK. Version 2 declares field groups
(``[[groups]]``, each with its own length and hardening chain) and each field names its
group: a record's encoding is its groups' CLKs in declared order (protocol/clk_layout.py).
A version 1 schema reads as it always did and keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from protocol.clk_layout import MAX_GROUPS, ClkLayout, GroupLayout
from protocol.errors import ConfigurationError, InvariantError, SchemaError
from protocol.hardening import (
    HardeningStep,
    chain_output_bits,
    describe_chain,
    parse_hardening,
)
from protocol.labels import LABEL_PATTERN
from protocol.normalisation import NORMALISER_VERSION, nickname_table_digest

__all__ = [
    "FIELD_KINDS",
    "HARDENING_METHODS",
    "HASHING_SCHEMES",
    "SCHEMA_VERSION",
    "TOKEN_METHODS",
    "FieldSpec",
    "GroupSpec",
    "LinkageSchema",
    "SchemaIdentity",
    "TokenSpec",
    "default_schema",
    "single_clk_schema",
    "is_schema_summary",
    "load_schema",
    "load_schema_identity",
    "parse_schema",
]

SCHEMA_VERSION = 2
"""The newest schema version this build reads (it reads every one in SCHEMA_VERSIONS)."""
SCHEMA_VERSIONS = (1, 2)
MAX_ENCODED_BITS = 65536
FIELD_KINDS = ("person_name", "free_text", "date", "sex", "postcode", "identifier")
TOKEN_METHODS = ("ngram", "exact", "date_parts", "phonetic")
HASHING_SCHEMES = ("hmac-sha256", "blake2b")
HARDENING_METHODS = ("none", "xor-fold", "balance")
MISSING_POLICIES = ("no-bits", "required")
PHONETIC_ALGORITHMS = ("soundex",)
TOKEN_WORDS = ("all", "first")

# Field names: labels that may also use '_' (date_of_birth).
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

# Which tokenisers make sense for which kind of field.
_METHODS_FOR_KIND: dict[str, tuple[str, ...]] = {
    "person_name": ("ngram", "exact", "phonetic"),
    "free_text": ("ngram", "exact", "phonetic"),
    "date": ("date_parts", "exact", "ngram"),
    "sex": ("exact",),
    "postcode": ("ngram", "exact"),
    "identifier": ("ngram", "exact"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSpec:
    """One tokeniser of a field and its weight.

    Weight is either ``bits`` (a budget: each token sets ``round(bits / token count)`` bits,
    so every value of the field sets about the same number of bits) or ``bits_per_token``.
    ``words = "first"`` tokenises only the value's first word (a forename field that holds
    middle names in one system and not in another). ``salt`` (schema v2) names another field
    whose normalised value is mixed into every token (protocol/tokens.py ``salted_token``);
    a record without that value gets none of these tokens.
    """

    method: str
    size: int = 2
    padded: bool = True
    positional: bool = False
    algorithm: str = "soundex"
    bits: int | None = None
    bits_per_token: int | None = None
    words: str = "all"
    salt: str | None = None

    def canonical(self) -> dict[str, Any]:
        data: dict[str, Any] = {"method": self.method}
        if self.words != "all":  # absent by default, so older schemas keep their fingerprints
            data["words"] = self.words
        if self.salt is not None:
            data["salt"] = self.salt
        if self.method == "ngram":
            data.update(size=self.size, padded=self.padded, positional=self.positional)
        if self.method == "phonetic":
            data["algorithm"] = self.algorithm
        if self.bits is not None:
            data["bits"] = self.bits
        if self.bits_per_token is not None:
            data["bits_per_token"] = self.bits_per_token
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec:
    """One schema field: its kind (which normalisation applies), tokenisers and policies."""

    name: str
    kind: str
    tokens: tuple[TokenSpec, ...]
    missing: str = "no-bits"
    nicknames: bool = False
    key_group: str | None = None
    max_length: int = 100
    group: str | None = None
    """The field group (schema v2) whose CLK the field's bits go into."""

    @property
    def key_label(self) -> str:
        """The label its key is derived under: its key group, else its own name."""
        return f"group:{self.key_group}" if self.key_group else f"field:{self.name}"

    @property
    def salts(self) -> tuple[str, ...]:
        """The other fields whose values salt this field's tokens, in first-use order."""
        return tuple(dict.fromkeys(token.salt for token in self.tokens if token.salt))

    def canonical(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "tokens": [token.canonical() for token in self.tokens],
            "missing": self.missing,
            "nicknames": self.nicknames,
            "key_group": self.key_group,
            "max_length": self.max_length,
        }
        if self.group is not None:
            data["group"] = self.group
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    """A schema v2 field group: its label, Bloom-filter length and hardening chain."""

    name: str
    clk_bits: int
    hardening: tuple[HardeningStep, ...] = ()

    @property
    def encoded_bits(self) -> int:
        """The group's length after hardening."""
        return chain_output_bits(self.hardening, self.clk_bits)

    @property
    def descriptor(self) -> str:
        """The canonical hardening descriptor (protocol/hardening.py)."""
        return describe_chain(self.hardening)

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "clk_bits": self.clk_bits,
            "hardening": [step.canonical() for step in self.hardening],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkageSchema:
    """A validated linkage schema. Build one with :func:`load_schema` or :func:`parse_schema`."""

    name: str
    fields: tuple[FieldSpec, ...]
    clk_bits: int = 1024
    hashing: str = "hmac-sha256"
    hardening: str = "none"
    """Version 1 only: the record-level hardening (version 2 hardens each group)."""
    schema_version: int = 1
    description: str = field(default="", compare=False)
    groups: tuple[GroupSpec, ...] = ()
    """Version 2 only: the field groups, in encoding order."""

    @property
    def grouped(self) -> bool:
        """Whether this is a version 2 schema (field groups, encoded file format 2)."""
        return self.schema_version >= 2

    @property
    def input_layout(self) -> ClkLayout:
        """The groups before hardening: where each field's bits are set."""
        if not self.grouped:
            return ClkLayout.single(self.clk_bits)
        return ClkLayout(
            groups=tuple(GroupLayout(name=group.name, bits=group.clk_bits) for group in self.groups)
        )

    @property
    def layout(self) -> ClkLayout:
        """The encoding's layout after hardening: what the encoded file and the LU see."""
        if not self.grouped:
            bits = self.clk_bits
            if self.hardening == "xor-fold":
                bits //= 2
            elif self.hardening == "balance":
                bits *= 2
            return ClkLayout.single(bits)
        return ClkLayout(
            groups=tuple(
                GroupLayout(name=group.name, bits=group.encoded_bits, hardening=group.descriptor)
                for group in self.groups
            )
        )

    @property
    def encoded_bits(self) -> int:
        """CLK length after hardening: what the encoded file and the linkage unit see."""
        return self.layout.total_bits

    def group_index(self, field_index: int) -> int:
        """Which group field ``field_index`` encodes into (0 for a version 1 schema)."""
        group = self.fields[field_index].group
        if group is None:
            return 0
        return [spec.name for spec in self.groups].index(group)

    def canonical(self) -> dict[str, Any]:
        """Everything that changes an encoding, and nothing else (not the description)."""
        data: dict[str, Any]
        if self.grouped:
            data = {
                "schema_version": self.schema_version,
                "name": self.name,
                "hashing": self.hashing,
                "normaliser": NORMALISER_VERSION,
                "groups": [group.canonical() for group in self.groups],
                "fields": [spec.canonical() for spec in self.fields],
            }
        else:
            data = {
                "schema_version": self.schema_version,
                "name": self.name,
                "clk_bits": self.clk_bits,
                "hashing": self.hashing,
                "hardening": self.hardening,
                "normaliser": NORMALISER_VERSION,
                "fields": [spec.canonical() for spec in self.fields],
            }
        if any(spec.nicknames for spec in self.fields):
            data["nickname_table_sha256"] = nickname_table_digest()
        return data

    def canonical_json(self) -> bytes:
        return json.dumps(
            self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the canonical form: equal exactly when two schemas encode alike."""
        return hashlib.sha256(self.canonical_json()).digest()


class _Problems:
    """Collects every problem so one error can list them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def unknown_keys(self, where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
        for key in sorted(set(data) - allowed):
            self.add(where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _integer(problems: _Problems, where: str, value: Any, *, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(where, "must be a whole number")
        return None
    if not low <= value <= high:
        problems.add(where, f"must be between {low} and {high}")
        return None
    return value


def _choice(problems: _Problems, where: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if value not in choices:
        problems.add(where, f"must be one of {', '.join(choices)}")
        return None
    return str(value)


def _boolean(problems: _Problems, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        problems.add(where, "must be true or false")
        return False
    return value


def _parse_token(
    problems: _Problems, where: str, data: Any, kind: str | None, version: int
) -> TokenSpec | None:
    if not isinstance(data, Mapping):
        problems.add(where, "must be a table")
        return None
    allowed = {
        "method",
        "size",
        "padded",
        "positional",
        "algorithm",
        "bits",
        "bits_per_token",
        "words",
        "salt",
    }
    problems.unknown_keys(where, data, allowed)
    method = _choice(problems, f"{where}.method", data.get("method"), TOKEN_METHODS)
    if method and kind and method not in _METHODS_FOR_KIND[kind]:
        problems.add(
            f"{where}.method",
            f"{method!r} does not apply to a {kind} field "
            f"(use {', '.join(_METHODS_FOR_KIND[kind])})",
        )
    size = _integer(problems, f"{where}.size", data.get("size", 2), low=1, high=5) or 2
    padded = _boolean(problems, f"{where}.padded", data.get("padded", True))
    positional = _boolean(problems, f"{where}.positional", data.get("positional", False))
    algorithm = (
        _choice(
            problems, f"{where}.algorithm", data.get("algorithm", "soundex"), PHONETIC_ALGORITHMS
        )
        or "soundex"
    )
    words = _choice(problems, f"{where}.words", data.get("words", "all"), TOKEN_WORDS) or "all"
    if words != "all" and method == "date_parts":
        problems.add(f"{where}.words", "does not apply to date_parts")
    bits = data.get("bits")
    per_token = data.get("bits_per_token")
    if (bits is None) == (per_token is None):
        problems.add(where, "give exactly one of 'bits' (a budget) or 'bits_per_token'")
    if bits is not None:
        bits = _integer(problems, f"{where}.bits", bits, low=1, high=65536)
    if per_token is not None:
        per_token = _integer(problems, f"{where}.bits_per_token", per_token, low=1, high=64)
    salt = data.get("salt")
    if salt is not None:
        if version < 2:
            problems.add(f"{where}.salt", "needs schema_version 2")
            salt = None
        elif not isinstance(salt, str) or not _FIELD_NAME.fullmatch(salt):
            problems.add(f"{where}.salt", "must name another field of the schema")
            salt = None
    if method is None:
        return None
    return TokenSpec(
        method=method,
        size=size,
        padded=padded,
        positional=positional,
        algorithm=algorithm,
        bits=bits,
        bits_per_token=per_token,
        words=words,
        salt=salt,
    )


def _parse_field(problems: _Problems, where: str, data: Any, version: int) -> FieldSpec | None:
    if not isinstance(data, Mapping):
        problems.add(where, "must be a table")
        return None
    allowed = {"name", "kind", "tokens", "missing", "nicknames", "key_group", "max_length"}
    if version >= 2:
        allowed.add("group")
    name = data.get("name")
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        problems.add(f"{where}.name", "must be a lower-case name of letters, digits, '_' or '-'")
        name = None
    else:
        where = f"field {name!r}"
    problems.unknown_keys(where, data, allowed)
    kind = _choice(problems, f"{where}.kind", data.get("kind"), FIELD_KINDS)
    raw_tokens = data.get("tokens")
    tokens: list[TokenSpec] = []
    if not isinstance(raw_tokens, list) or not raw_tokens:
        problems.add(f"{where}.tokens", "must list at least one tokeniser")
    else:
        for index, item in enumerate(raw_tokens):
            token = _parse_token(problems, f"{where}.tokens[{index}]", item, kind, version)
            if token:
                tokens.append(token)
    missing = _choice(
        problems, f"{where}.missing", data.get("missing", "no-bits"), MISSING_POLICIES
    )
    nicknames = _boolean(problems, f"{where}.nicknames", data.get("nicknames", False))
    if nicknames and kind not in (None, "person_name"):
        problems.add(f"{where}.nicknames", "applies only to person_name fields")
    key_group = data.get("key_group")
    if key_group is not None and (
        not isinstance(key_group, str) or not LABEL_PATTERN.fullmatch(key_group)
    ):
        problems.add(f"{where}.key_group", "must be a lower-case label")
        key_group = None
    max_length = _integer(
        problems, f"{where}.max_length", data.get("max_length", 100), low=1, high=1000
    )
    group = data.get("group")
    if version >= 2 and (not isinstance(group, str) or not LABEL_PATTERN.fullmatch(group)):
        problems.add(f"{where}.group", "must name one of the schema's [[groups]]")
        group = None
    if name is None or kind is None or missing is None or max_length is None:
        return None
    return FieldSpec(
        name=name,
        kind=kind,
        tokens=tuple(tokens),
        missing=missing,
        nicknames=nicknames,
        key_group=key_group,
        max_length=max_length,
        group=group if version >= 2 else None,
    )


def _parse_group(problems: _Problems, where: str, data: Any) -> GroupSpec | None:
    if not isinstance(data, Mapping):
        problems.add(where, "must be a table")
        return None
    name = data.get("name")
    if not isinstance(name, str) or not LABEL_PATTERN.fullmatch(name):
        problems.add(f"{where}.name", "must be a lower-case label (a-z, 0-9, '-')")
        name = None
    else:
        where = f"group {name!r}"
    problems.unknown_keys(where, data, {"name", "clk_bits", "hardening"})
    clk_bits = _integer(problems, f"{where}.clk_bits", data.get("clk_bits"), low=64, high=65536)
    if clk_bits is not None and clk_bits % 64:
        problems.add(f"{where}.clk_bits", "must be a multiple of 64")
        clk_bits = None
    if clk_bits is None:
        return None
    hardening = parse_hardening(
        data.get("hardening"), input_bits=clk_bits, where=f"{where}.hardening", add=problems.add
    )
    if name is None:
        return None
    return GroupSpec(name=name, clk_bits=clk_bits, hardening=hardening)


def _check_groups(
    problems: _Problems, groups: list[GroupSpec], fields: list[FieldSpec], raw_count: int
) -> None:
    """Cross-checks of a version 2 schema: groups used and declared, salts that make sense."""
    if not (1 <= raw_count <= MAX_GROUPS):
        problems.add("groups", f"must list 1 to {MAX_GROUPS} field groups")
    names = [group.name for group in groups]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.add(f"group {name!r}", "is defined twice")
    for spec in fields:
        if spec.group is not None and spec.group not in names:
            problems.add(f"field {spec.name!r}.group", f"{spec.group!r} is not a declared group")
    used = {spec.group for spec in fields}
    for name in names:
        if name not in used:
            problems.add(f"group {name!r}", "has no fields: every group needs at least one")
    if sum(chain_output_bits(group.hardening, group.clk_bits) for group in groups) > (
        MAX_ENCODED_BITS
    ):
        problems.add("groups", f"the encoding would be over {MAX_ENCODED_BITS} bits in all")
    field_names = {spec.name for spec in fields}
    for spec in fields:
        for index, token in enumerate(spec.tokens):
            if token.salt is None:
                continue
            at = f"field {spec.name!r}.tokens[{index}].salt"
            if token.salt == spec.name:
                problems.add(at, "a field cannot salt its own tokens; name another field")
            elif token.salt not in field_names:
                problems.add(at, f"{token.salt!r} is not a field of this schema")


def parse_schema(data: Any, *, source: str | None = None) -> LinkageSchema:
    """Validate a schema document (already parsed from TOML/JSON); list every problem at once."""
    problems = _Problems()
    if not isinstance(data, Mapping):
        raise SchemaError(["the document must be a table of keys"], source=source)
    version = data.get("schema_version")
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        problems.add(
            "schema_version",
            f"must be one of {', '.join(map(str, SCHEMA_VERSIONS))} (this build reads those)",
        )
        version = SCHEMA_VERSION
    allowed = {"schema_version", "name", "description", "hashing", "fields"}
    allowed |= {"groups"} if version >= 2 else {"clk_bits", "hardening"}
    for key in ("clk_bits", "hardening"):
        if version >= 2 and key in data:
            problems.add(
                key,
                "in schema_version 2 each [[groups]] entry has its own clk_bits and hardening",
            )
    if version < 2 and "groups" in data:
        problems.add("groups", "field groups need schema_version 2")
    problems.unknown_keys(
        "schema",
        {
            key: value
            for key, value in data.items()
            if key not in ("clk_bits", "hardening", "groups")
        },
        allowed,
    )
    name = data.get("name")
    if not isinstance(name, str) or not LABEL_PATTERN.fullmatch(name):
        problems.add("name", "must be a lower-case label (a-z, 0-9, '-')")
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.add("description", "must be text")
    hashing = _choice(problems, "hashing", data.get("hashing", "hmac-sha256"), HASHING_SCHEMES)
    groups: list[GroupSpec] = []
    raw_groups = data.get("groups")
    if version >= 2:
        clk_bits: int | None = 0
        hardening: str | None = "none"
        if not isinstance(raw_groups, list):
            problems.add("groups", "must list the field groups ([[groups]] tables)")
            raw_groups = []
        for index, item in enumerate(raw_groups):
            group = _parse_group(problems, f"groups[{index}]", item)
            if group is not None:
                groups.append(group)
    else:
        clk_bits = _integer(problems, "clk_bits", data.get("clk_bits", 1024), low=64, high=65536)
        if clk_bits is not None and clk_bits % 64:
            problems.add("clk_bits", "must be a multiple of 64")
        hardening = _choice(problems, "hardening", data.get("hardening", "none"), HARDENING_METHODS)
        if hardening == "xor-fold" and clk_bits is not None and clk_bits % 128:
            problems.add("hardening", "xor-fold needs clk_bits to be a multiple of 128")
    raw_fields = data.get("fields")
    fields: list[FieldSpec] = []
    if not isinstance(raw_fields, list) or not raw_fields:
        problems.add("fields", "must list at least one field")
    else:
        seen: set[str] = set()
        for index, item in enumerate(raw_fields):
            spec = _parse_field(problems, f"fields[{index}]", item, version)
            if spec is None:
                continue
            if spec.name in seen:
                problems.add(f"field {spec.name!r}", "is defined twice")
            seen.add(spec.name)
            fields.append(spec)
    if version >= 2:
        _check_groups(problems, groups, fields, len(raw_groups) if raw_groups else 0)
        clk_bits = sum(group.clk_bits for group in groups)
    if problems.items:
        raise SchemaError(problems.items, source=source)
    if not (isinstance(name, str) and clk_bits is not None and hashing and hardening):
        raise InvariantError("a schema without problems has a name, CLK bits and settings")
    return LinkageSchema(
        name=name,
        description=description,
        fields=tuple(fields),
        clk_bits=clk_bits,
        hashing=hashing,
        hardening=hardening,
        schema_version=version,
        groups=tuple(groups),
    )


SUMMARY_PROBLEM = (
    "this is the output of bloomlink schema check --json (a schema's fingerprint and "
    "summary, without the fields' rules), not a linkage schema: give the schema file it was "
    "made from (TOML, e.g. schema.toml); only project create and spine create, which need "
    "just the fingerprint and layout, take the summary"
)


def is_schema_summary(data: Any) -> bool:
    """Whether ``data`` is the output of ``bloomlink schema check --json``, which a person may
    feed back where a schema is expected: it names a fingerprint, not the fields."""
    return isinstance(data, Mapping) and "fingerprint" in data and "encoded_bits" in data


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaIdentity:
    """What a project or spine is bound to: a schema's fingerprint and, for a grouped (v2)
    schema, its layout (None for a single CLK, or when only a fingerprint is known)."""

    fingerprint: bytes
    layout: ClkLayout | None = None

    def __post_init__(self) -> None:
        if len(self.fingerprint) != 32:
            raise SchemaError(["fingerprint: must be a SHA-256 (64 hex digits)"])


def load_schema_identity(path: Path | str) -> SchemaIdentity:
    """A schema's fingerprint and layout, from the schema file itself or from the output of
    ``bloomlink schema check --json`` (what an operator may hold instead of the file)."""
    source = Path(path)
    data = _read_document(source)
    if not is_schema_summary(data):
        schema = parse_schema(data, source=str(source))
        return SchemaIdentity(
            fingerprint=schema.fingerprint, layout=schema.layout if schema.grouped else None
        )
    problem = "not the output of bloomlink schema check --json"
    try:
        fingerprint = bytes.fromhex(str(data["fingerprint"]))
        raw_layout = data.get("layout")
        layout = None if raw_layout is None else ClkLayout.from_record(raw_layout)
        return SchemaIdentity(fingerprint=fingerprint, layout=layout)
    except SchemaError as error:
        raise SchemaError(error.problems, source=str(source)) from None
    except (ValueError, TypeError, ConfigurationError) as error:
        detail = error.message if isinstance(error, ConfigurationError) else "bad fingerprint"
        raise SchemaError([f"{problem}: {detail}"], source=str(source)) from None


def load_schema(path: Path | str) -> LinkageSchema:
    """Read and validate a schema file (``.toml`` or ``.json``)."""
    source = Path(path)
    data = _read_document(source)
    if is_schema_summary(data):
        raise SchemaError([SUMMARY_PROBLEM], source=str(source))
    return parse_schema(data, source=str(source))


def _read_document(source: Path) -> Any:
    """A schema document parsed from TOML, or JSON for ``.json`` (or a ``schema check
    --json`` summary whatever the file is called)."""
    try:
        text = source.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SchemaError(["file does not exist"], source=str(source)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SchemaError([f"cannot read file: {error}"], source=str(source)) from None
    duplicates: list[str] = []

    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # TOML refuses a repeated key; JSON would silently keep the last one.
        keys = [key for key, _ in pairs]
        duplicates.extend(sorted({key for key in keys if keys.count(key) > 1}))
        return dict(pairs)

    try:
        if source.suffix == ".json":
            data = json.loads(text, object_pairs_hook=no_duplicate_keys)
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        if source.suffix != ".json" and is_schema_summary(_json_or_none(text)):
            return json.loads(text)
        raise SchemaError(
            [f"not valid {source.suffix.lstrip('.') or 'TOML'}: {error}"], source=str(source)
        ) from None
    if duplicates:
        raise SchemaError(
            [f"key {key!r} is given more than once" for key in duplicates], source=str(source)
        )
    return data


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _shipped(name: str) -> LinkageSchema:
    text = resources.files("protocol").joinpath(f"data/{name}").read_text("utf-8")
    return parse_schema(tomllib.loads(text), source=name)


def default_schema() -> LinkageSchema:
    """The schema shipped with bloomlink (protocol/data/default_schema.toml): three hardened
    field groups (docs/encoding.md says why)."""
    return _shipped("default_schema.toml")


def single_clk_schema() -> LinkageSchema:
    """The unhardened single-CLK (v1) schema, the default until 2026-12-05
    (protocol/data/single_clk_schema.toml): for v1 projects and side-by-side measurement."""
    return _shipped("single_clk_schema.toml")
