"""An independent reference encoder, written from docs/encoding.md with nothing but the
standard library's hmac and hashlib (HKDF implemented here from RFC 5869).

It shares no code with protocol/: it starts from normalised values and a schema's canonical
form, and is deliberately slow and plain (a bytearray, one bit at a time). The golden
vectors are made with it; the production encoder must reproduce them bit for bit.

Encoding v2 (schema version 2: field groups, per-group keys, salted tokens, per-group
hardening chains with diffusion, BLIP, rule 90, balance and xor-fold) is written from the
same document, one list of bits per group.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from collections.abc import Callable
from typing import Any


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    output, block, counter = b"", b"", 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
        counter += 1
    return output[:length]


def length_prefixed(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">H", len(data)) + data


def fingerprint(canonical_schema: dict[str, Any]) -> bytes:
    text = json.dumps(canonical_schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def key_check_value(secret: bytes, project_id: str) -> bytes:
    message = b"bloomlink/v1/kcv" + length_prefixed(project_id)
    return hmac.new(secret, message, hashlib.sha256).digest()[:16]


def field_key(
    secret: bytes, project_id: str, schema_fingerprint: bytes, field: dict[str, Any]
) -> bytes:
    label = f"group:{field['key_group']}" if field.get("key_group") else f"field:{field['name']}"
    info = length_prefixed(project_id) + schema_fingerprint + length_prefixed(label)
    return hkdf_sha256(secret, salt=b"bloomlink/v1/field-key", info=info)


def group_field_key(
    secret: bytes, project_id: str, schema_fingerprint: bytes, group: str, field: dict[str, Any]
) -> bytes:
    """Schema v2: the field key also names the field's group."""
    label = f"group:{field['key_group']}" if field.get("key_group") else f"field:{field['name']}"
    info = (
        length_prefixed(project_id)
        + schema_fingerprint
        + length_prefixed(group)
        + length_prefixed(label)
    )
    return hkdf_sha256(secret, salt=b"bloomlink/v2/field-key", info=info)


def group_hardening_key(
    secret: bytes, project_id: str, schema_fingerprint: bytes, group: str, step: int, method: str
) -> bytes:
    info = (
        length_prefixed(project_id)
        + schema_fingerprint
        + length_prefixed(group)
        + length_prefixed(f"{step}:{method}")
    )
    return hkdf_sha256(secret, salt=b"bloomlink/v2/hardening", info=info)


def soundex(word: str) -> str | None:
    groups = {"bfpv": "1", "cgjkqsxz": "2", "dt": "3", "l": "4", "mn": "5", "r": "6"}
    code_of = {letter: digit for letters, digit in groups.items() for letter in letters}
    letters = [c for c in word if "a" <= c <= "z"]
    if not letters:
        return None
    result = letters[0].upper()
    last = code_of.get(letters[0], "")
    for letter in letters[1:]:
        if letter in "hw":
            continue  # h and w do not separate two letters with the same code
        code = code_of.get(letter, "")
        if code and code != last:
            result += code
        last = code  # a vowel resets, so the same code after a vowel is written again
    return (result + "000")[:4]


def tokens(value: str, tokeniser: dict[str, Any]) -> list[str]:
    method = tokeniser["method"]
    found: list[str] = []
    if tokeniser.get("words", "all") == "first":
        value = value.partition(" ")[0]
    if method == "ngram":
        size = tokeniser["size"]
        text = "_" * (size - 1) + value + "_" * (size - 1) if tokeniser["padded"] else value
        if len(text) < size:
            found = [f"g{size}:{text}"] if text else []
        for start in range(len(text) - size + 1):
            gram = text[start : start + size]
            found.append(
                f"p{size}:{start}:{gram}" if tokeniser["positional"] else f"g{size}:{gram}"
            )
    elif method == "exact":
        found = [f"x:{value}"]
    elif method == "date_parts":
        year, month, day = value[0:4], value[5:7], value[8:10]
        found = [
            f"y:{year}",
            f"m:{month}",
            f"d:{day}",
            f"dm:{min(month, day)}{max(month, day)}",
            f"ym:{year}{month}",
        ]
    elif method == "phonetic":
        found = [f"s:{code}" for word in value.split(" ") if (code := soundex(word))]
    unique: list[str] = []
    for token in found:
        if token not in unique:
            unique.append(token)
    return unique


def bits_per_token(tokeniser: dict[str, Any], count: int) -> int:
    if "bits_per_token" in tokeniser:
        return int(tokeniser["bits_per_token"])
    return max(1, int((tokeniser["bits"] + count // 2) // count))


def positions(key: bytes, token: str, count: int, clk_bits: int, hashing: str) -> list[int]:
    found: list[int] = []
    limit = 2**32 - (2**32 % clk_bits)
    block = 0
    while len(found) < count:
        message = struct.pack(">I", block) + token.encode("utf-8")
        if hashing == "hmac-sha256":
            digest = hmac.new(key, message, hashlib.sha256).digest()
        else:
            digest = hashlib.blake2b(message, key=key, digest_size=32).digest()
        for word in struct.unpack(">8I", digest):
            if word < limit and len(found) < count:
                found.append(word % clk_bits)
        block += 1
    return found


class KeyedWords:
    """u32 words of HMAC-SHA256(key, u64be(0)), HMAC-SHA256(key, u64be(1)), ... in order."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.counter = 0
        self.stream: list[int] = []

    def below(self, span: int) -> int:
        limit = 2**32 - (2**32 % span)
        while True:
            if not self.stream:
                digest = hmac.new(self.key, struct.pack(">Q", self.counter), hashlib.sha256)
                self.stream = list(struct.unpack(">8I", digest.digest()))
                self.counter += 1
            word = self.stream.pop(0)
            if word < limit:
                return word % span


def taps(key: bytes, input_bits: int, output_bits: int, width: int) -> list[list[int]]:
    """Diffusion: each output bit's ``width`` distinct input positions, drawn in order."""
    words = KeyedWords(key)
    rows = []
    for _ in range(output_bits):
        row: list[int] = []
        while len(row) < width:
            position = words.below(input_bits)
            if position not in row:
                row.append(position)
        rows.append(row)
    return rows


def nonlinear_diffusion(bits: list[int], rows: list[list[int]]) -> list[int]:
    """Nonlinear diffusion: each output bit XORs its row's positions but the last two, and
    XORs in the AND of those two."""
    out = []
    for row in rows:
        value = 0
        for position in row[:-2]:
            value ^= bits[position]
        out.append(value ^ (bits[row[-2]] & bits[row[-1]]))
    return out


def permutation(key: bytes, length: int) -> list[int]:
    """Fisher-Yates driven by HMAC-SHA256(key, u64be(counter)) words, with rejection."""
    order = list(range(length))
    stream: list[int] = []
    counter = 0
    for index in range(length - 1, 0, -1):
        span = index + 1
        limit = 2**32 - (2**32 % span)
        while True:
            if not stream:
                digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha256).digest()
                stream = list(struct.unpack(">8I", digest))
                counter += 1
            word = stream.pop(0)
            if word < limit:
                break
        other = word % span
        order[index], order[other] = order[other], order[index]
    return order


def get_bit(data: bytes | bytearray, index: int) -> int:
    return (data[index // 8] >> (index % 8)) & 1


def encode(
    canonical_schema: dict[str, Any], secret: bytes, project_id: str, values: list[str | None]
) -> bytes:
    """The CLK of one record whose normalised values are given in schema field order."""
    clk_bits = canonical_schema["clk_bits"]
    schema_fingerprint = fingerprint(canonical_schema)
    clk = bytearray(clk_bits // 8)
    for field, value in zip(canonical_schema["fields"], values, strict=True):
        if value is None:
            continue  # a missing value sets no bits
        key = field_key(secret, project_id, schema_fingerprint, field)
        for tokeniser in field["tokens"]:
            found = tokens(value, tokeniser)
            if not found:
                continue
            count = bits_per_token(tokeniser, len(found))
            for token in found:
                for position in positions(key, token, count, clk_bits, canonical_schema["hashing"]):
                    clk[position // 8] |= 1 << (position % 8)
    hardening = canonical_schema["hardening"]
    if hardening == "xor-fold":
        half = clk_bits // 2
        folded = bytearray(half // 8)
        for index in range(half):
            if get_bit(clk, index) ^ get_bit(clk, index + half):
                folded[index // 8] |= 1 << (index % 8)
        return bytes(folded)
    if hardening == "balance":
        doubled = [get_bit(clk, i) for i in range(clk_bits)] + [
            1 - get_bit(clk, i) for i in range(clk_bits)
        ]
        info = length_prefixed(project_id) + schema_fingerprint + length_prefixed("balance")
        key = hkdf_sha256(secret, salt=b"bloomlink/v1/hardening", info=info)
        order = permutation(key, 2 * clk_bits)
        balanced = bytearray(2 * clk_bits // 8)
        for index, source in enumerate(order):
            if doubled[source]:
                balanced[index // 8] |= 1 << (index % 8)
        return bytes(balanced)
    return bytes(clk)


def canonical_schema(
    document: dict[str, Any], *, normaliser: str, nickname_table_sha256: str
) -> dict[str, Any]:
    """The canonical form of a schema document, filled in with its defaults (docs/schema.md)."""
    fields = []
    for field in document["fields"]:
        tokenisers = []
        for tokeniser in field["tokens"]:
            canonical: dict[str, Any] = {"method": tokeniser["method"]}
            if tokeniser.get("words", "all") != "all":
                canonical["words"] = tokeniser["words"]
            if tokeniser["method"] == "ngram":
                canonical["size"] = tokeniser.get("size", 2)
                canonical["padded"] = tokeniser.get("padded", True)
                canonical["positional"] = tokeniser.get("positional", False)
            if tokeniser["method"] == "phonetic":
                canonical["algorithm"] = tokeniser.get("algorithm", "soundex")
            for weight in ("bits", "bits_per_token"):
                if weight in tokeniser:
                    canonical[weight] = tokeniser[weight]
            tokenisers.append(canonical)
        fields.append(
            {
                "name": field["name"],
                "kind": field["kind"],
                "tokens": tokenisers,
                "missing": field.get("missing", "no-bits"),
                "nicknames": field.get("nicknames", False),
                "key_group": field.get("key_group"),
                "max_length": field.get("max_length", 100),
            }
        )
    result: dict[str, Any] = {
        "schema_version": document["schema_version"],
        "name": document["name"],
        "clk_bits": document.get("clk_bits", 1024),
        "hashing": document.get("hashing", "hmac-sha256"),
        "hardening": document.get("hardening", "none"),
        "normaliser": normaliser,
        "fields": fields,
    }
    if any(field["nicknames"] for field in fields):
        result["nickname_table_sha256"] = nickname_table_sha256
    return result


# -- schema version 2 ------------------------------------------------------------------------


def salted(token: str, salt: str) -> str:
    return "~" + str(len(salt)) + ":" + salt + "~" + token


def harden_bits(
    bits: list[int],
    steps: list[dict[str, Any]],
    key_of: Callable[[int, str], bytes],
    random_bytes: Callable[[int], bytes],
) -> list[int]:
    """One group's chain on its bits (a list of 0/1); an all-zero group stays all zero but
    still draws BLIP's bytes."""
    empty = not any(bits)
    for index, step in enumerate(steps):
        method = step["method"]
        length = len(bits)
        if method == "xor-fold":
            half = length // 2
            bits = [bits[i] ^ bits[i + half] for i in range(half)]
        elif method == "balance":
            doubled = bits + [1 - bit for bit in bits]
            order = permutation(key_of(index, method), 2 * length)
            bits = [doubled[source] for source in order]
        elif method == "rule90":
            bits = [bits[(i - 1) % length] ^ bits[(i + 1) % length] for i in range(length)]
        elif method == "diffusion":
            rows = taps(key_of(index, method), length, step["output_bits"], step["width"])
            out = []
            for row in rows:
                value = 0
                for position in row:
                    value ^= bits[position]
                out.append(value)
            bits = out
        elif method == "nonlinear-diffusion":
            rows = taps(key_of(index, method), length, step["output_bits"], step["width"] + 2)
            bits = nonlinear_diffusion(bits, rows)
        elif method == "blip":
            stream = random_bytes(2 * length)
            for i in range(length):
                draw = stream[2 * i] | (stream[2 * i + 1] << 8)
                if draw < step["flip_per_65536"] and not empty:
                    bits[i] ^= 1
        else:
            raise ValueError(f"unknown hardening {method}")
        if empty:
            bits = [0] * len(bits)
    return bits


def encode_grouped(
    canonical_schema: dict[str, Any],
    secret: bytes,
    project_id: str,
    values: list[str | None],
    random_bytes: Callable[[int], bytes] | None = None,
) -> bytes:
    """The encoding of one record under a version 2 schema: its groups' CLKs in order."""
    schema_fingerprint = fingerprint(canonical_schema)
    by_name = {
        field["name"]: value
        for field, value in zip(canonical_schema["fields"], values, strict=True)
    }
    out_bits: list[int] = []
    for group in canonical_schema["groups"]:
        clk_bits = group["clk_bits"]
        bits = [0] * clk_bits
        for field, value in zip(canonical_schema["fields"], values, strict=True):
            if field["group"] != group["name"] or value is None:
                continue
            key = group_field_key(secret, project_id, schema_fingerprint, group["name"], field)
            for tokeniser in field["tokens"]:
                found = tokens(value, tokeniser)
                if "salt" in tokeniser:
                    salt = by_name[tokeniser["salt"]]
                    if salt is None:
                        continue  # no salt, no salted tokens
                    found = [salted(token, salt) for token in found]
                if not found:
                    continue
                count = bits_per_token(tokeniser, len(found))
                for token in found:
                    for position in positions(
                        key, token, count, clk_bits, canonical_schema["hashing"]
                    ):
                        bits[position] = 1

        def key_of(step: int, method: str, name: str = group["name"]) -> bytes:
            return group_hardening_key(secret, project_id, schema_fingerprint, name, step, method)

        out_bits += harden_bits(bits, group["hardening"], key_of, random_bytes or _no_random_bytes)
    encoded = bytearray(len(out_bits) // 8)
    for index, bit in enumerate(out_bits):
        if bit:
            encoded[index // 8] |= 1 << (index % 8)
    return bytes(encoded)


def _no_random_bytes(count: int) -> bytes:
    raise ValueError("this schema uses BLIP: give random_bytes")


def flip_per_65536(step: dict[str, Any]) -> int:
    """BLIP's flip threshold from a schema document's step (flip_probability or epsilon)."""
    if "flip_probability" in step:
        probability = step["flip_probability"]
    else:
        probability = 1.0 / (1.0 + math.exp(step["epsilon"]))
    return int(math.floor(probability * 65536 + 0.5))


def canonical_schema_v2(
    document: dict[str, Any], *, normaliser: str, nickname_table_sha256: str
) -> dict[str, Any]:
    """The canonical form of a version 2 schema document (docs/schema.md)."""
    base = dict(document, clk_bits=1024)
    base.pop("groups", None)
    v1 = canonical_schema(base, normaliser=normaliser, nickname_table_sha256=nickname_table_sha256)
    fields = []
    for field, canonical in zip(document["fields"], v1["fields"], strict=True):
        canonical = dict(canonical, group=field["group"])
        for source, token in zip(field["tokens"], canonical["tokens"], strict=True):
            if "salt" in source:
                token["salt"] = source["salt"]
        fields.append(canonical)
    groups = []
    for group in document["groups"]:
        hardening = group.get("hardening", "none")
        if hardening == "none" or hardening == {"method": "none"}:
            hardening = []
        elif not isinstance(hardening, list):
            hardening = [hardening]
        steps = []
        for step in hardening:
            if isinstance(step, str):
                step = {"method": step}
            canonical_step: dict[str, Any] = {"method": step["method"]}
            if step["method"] in ("diffusion", "nonlinear-diffusion"):
                canonical_step["width"] = step["width"]
                canonical_step["output_bits"] = step.get("output_bits", group["clk_bits"])
            if step["method"] == "blip":
                canonical_step["flip_per_65536"] = flip_per_65536(step)
            steps.append(canonical_step)
        groups.append({"name": group["name"], "clk_bits": group["clk_bits"], "hardening": steps})
    result: dict[str, Any] = {
        "schema_version": document["schema_version"],
        "name": document["name"],
        "hashing": document.get("hashing", "hmac-sha256"),
        "normaliser": normaliser,
        "groups": groups,
        "fields": fields,
    }
    if "nickname_table_sha256" in v1:
        result["nickname_table_sha256"] = v1["nickname_table_sha256"]
    return result
