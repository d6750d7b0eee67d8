"""The linkage schema: which fields are encoded, how each is tokenised and weighted, and how
long the CLK is. Every party of a project encodes under the same schema; its fingerprint
(SHA-256 of the canonical form, including the normaliser version) travels with the CLKs so
the linkage unit can refuse to compare encodings made under different schemas.

A schema is a TOML (or JSON) file; docs/schema.md documents every key. Validation collects
every problem and raises one :class:`SchemaError` listing them all.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from protocol.errors import SchemaError
from protocol.labels import LABEL_PATTERN
from protocol.normalisation import NORMALISER_VERSION, nickname_table_digest

__all__ = [
    "FIELD_KINDS",
    "HARDENING_METHODS",
    "HASHING_SCHEMES",
    "SCHEMA_VERSION",
    "TOKEN_METHODS",
    "FieldSpec",
    "LinkageSchema",
    "TokenSpec",
    "default_schema",
    "load_schema",
    "parse_schema",
]

SCHEMA_VERSION = 1
FIELD_KINDS = ("person_name", "free_text", "date", "sex", "postcode", "identifier")
TOKEN_METHODS = ("ngram", "exact", "date_parts", "phonetic")
HASHING_SCHEMES = ("hmac-sha256", "blake2b")
HARDENING_METHODS = ("none", "xor-fold", "balance")
MISSING_POLICIES = ("no-bits", "required")
PHONETIC_ALGORITHMS = ("soundex",)
TOKEN_WORDS = ("all", "first")

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
    middle names in one system and not in another).
    """

    method: str
    size: int = 2
    padded: bool = True
    positional: bool = False
    algorithm: str = "soundex"
    bits: int | None = None
    bits_per_token: int | None = None
    words: str = "all"

    def canonical(self) -> dict[str, Any]:
        data: dict[str, Any] = {"method": self.method}
        if self.words != "all":  # absent by default, so older schemas keep their fingerprints
            data["words"] = self.words
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

    @property
    def key_label(self) -> str:
        """The label its key is derived under: its key group, else its own name."""
        return f"group:{self.key_group}" if self.key_group else f"field:{self.name}"

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "tokens": [token.canonical() for token in self.tokens],
            "missing": self.missing,
            "nicknames": self.nicknames,
            "key_group": self.key_group,
            "max_length": self.max_length,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkageSchema:
    """A validated linkage schema. Build one with :func:`load_schema` or :func:`parse_schema`."""

    name: str
    fields: tuple[FieldSpec, ...]
    clk_bits: int = 1024
    hashing: str = "hmac-sha256"
    hardening: str = "none"
    schema_version: int = SCHEMA_VERSION
    description: str = field(default="", compare=False)

    @property
    def encoded_bits(self) -> int:
        """CLK length after hardening: what the encoded file and the linkage unit see."""
        if self.hardening == "xor-fold":
            return self.clk_bits // 2
        if self.hardening == "balance":
            return self.clk_bits * 2
        return self.clk_bits

    def canonical(self) -> dict[str, Any]:
        """Everything that changes an encoding, and nothing else (not the description)."""
        data: dict[str, Any] = {
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


def _parse_token(problems: _Problems, where: str, data: Any, kind: str | None) -> TokenSpec | None:
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
    )


def _parse_field(problems: _Problems, where: str, data: Any) -> FieldSpec | None:
    if not isinstance(data, Mapping):
        problems.add(where, "must be a table")
        return None
    allowed = {"name", "kind", "tokens", "missing", "nicknames", "key_group", "max_length"}
    name = data.get("name")
    if not isinstance(name, str) or not LABEL_PATTERN.fullmatch(name.replace("_", "-")):
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
            token = _parse_token(problems, f"{where}.tokens[{index}]", item, kind)
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
    )


def parse_schema(data: Any, *, source: str | None = None) -> LinkageSchema:
    """Validate a schema document (already parsed from TOML/JSON); list every problem at once."""
    problems = _Problems()
    if not isinstance(data, Mapping):
        raise SchemaError(["the document must be a table of keys"], source=source)
    allowed = {
        "schema_version",
        "name",
        "description",
        "clk_bits",
        "hashing",
        "hardening",
        "fields",
    }
    problems.unknown_keys("schema", data, allowed)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        problems.add(
            "schema_version",
            f"must be {SCHEMA_VERSION} (this build reads version {SCHEMA_VERSION})",
        )
    name = data.get("name")
    if not isinstance(name, str) or not LABEL_PATTERN.fullmatch(name):
        problems.add("name", "must be a lower-case label (a-z, 0-9, '-')")
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.add("description", "must be text")
    clk_bits = _integer(problems, "clk_bits", data.get("clk_bits", 1024), low=64, high=65536)
    if clk_bits is not None and clk_bits % 64:
        problems.add("clk_bits", "must be a multiple of 64")
    hashing = _choice(problems, "hashing", data.get("hashing", "hmac-sha256"), HASHING_SCHEMES)
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
            spec = _parse_field(problems, f"fields[{index}]", item)
            if spec is None:
                continue
            if spec.name in seen:
                problems.add(f"field {spec.name!r}", "is defined twice")
            seen.add(spec.name)
            fields.append(spec)
    if problems.items:
        raise SchemaError(problems.items, source=source)
    assert isinstance(name, str) and clk_bits and hashing and hardening
    return LinkageSchema(
        name=name,
        description=description,
        fields=tuple(fields),
        clk_bits=clk_bits,
        hashing=hashing,
        hardening=hardening,
    )


def load_schema(path: Path | str) -> LinkageSchema:
    """Read and validate a schema file (``.toml`` or ``.json``)."""
    source = Path(path)
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
        raise SchemaError(
            [f"not valid {source.suffix.lstrip('.') or 'TOML'}: {error}"], source=str(source)
        ) from None
    if duplicates:
        raise SchemaError(
            [f"key {key!r} is given more than once" for key in duplicates], source=str(source)
        )
    return parse_schema(data, source=str(source))


def default_schema() -> LinkageSchema:
    """The schema shipped with bloomlink (protocol/data/default_schema.toml)."""
    text = resources.files("protocol").joinpath("data/default_schema.toml").read_text("utf-8")
    return parse_schema(tomllib.loads(text), source="default_schema.toml")
