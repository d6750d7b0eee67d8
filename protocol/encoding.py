"""Stage 3, encode: normalised field values -> one keyed Bloom-filter encoding (CLK) per record.

The recipe is :class:`ClkEncoder`; the functions below it are primitives it composes, with
a warning to use the recipe. Encoding v1 (docs/encoding.md has the worked example):

* each field has its own key (protocol/keys.py); fields in one ``key_group`` share one,
  which makes, e.g., forename and surname bigrams set the same bits wherever they appear;
* a token sets ``k`` bits: ``bits_per_token``, or ``round(bits / tokens in the value)`` so
  every value of a field sets about the same number of bits (field weighting);
* the bit positions of a token are independent keyed hashes, never double hashing: block
  ``j`` is HMAC-SHA256(field key, u32be(j) || UTF-8 token) (or keyed BLAKE2b-256), read as
  eight big-endian u32 words; a word ``w`` is used if ``w < 2**32 - 2**32 % clk_bits`` (so
  positions are exactly uniform) and gives position ``w % clk_bits``; blocks continue until
  ``k`` positions are drawn;
* a missing value sets no bits; the CLK is the OR of every field's bits;
* optional hardening (``xor-fold`` or ``balance``) is applied to the finished CLK.

Speed comes from two bounded caches per encoder (token -> bit mask, value -> bit mask) held
as Python ints, so a repeated name costs a dictionary lookup. The caches key on tokens and
values only, never on the key, and die with the encoder.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from protocol.keys import derive_field_key, derive_hardening_key, key_check_value
from protocol.schema import FieldSpec, LinkageSchema, TokenSpec
from protocol.secret import LinkageSecret
from protocol.tokens import tokenise

__all__ = [
    "ClkEncoder",
    "balance",
    "bits_for_token",
    "keyed_permutation",
    "token_positions",
    "xor_fold",
]

_WORDS = struct.Struct(">8I")
_CACHE_LIMIT = 200_000  # entries per cache; cleared when full so memory stays flat


def token_positions(
    key: bytes, token: str, count: int, *, clk_bits: int, hashing: str
) -> list[int]:
    """Primitive: the first ``count`` bit positions of ``token`` under ``key``.

    Use :class:`ClkEncoder`; this is exposed for the reference tests and documentation.
    """
    data = token.encode("utf-8")
    limit = (1 << 32) - (1 << 32) % clk_bits
    positions: list[int] = []
    block = 0
    while len(positions) < count:
        message = block.to_bytes(4, "big") + data
        if hashing == "hmac-sha256":
            digest = hmac.digest(key, message, "sha256")
        else:
            digest = hashlib.blake2b(message, key=key, digest_size=32).digest()
        for word in _WORDS.unpack(digest):
            if word < limit:
                positions.append(word % clk_bits)
                if len(positions) == count:
                    break
        block += 1
    return positions


def bits_for_token(spec: TokenSpec, token_count: int) -> int:
    """Primitive: how many bits each of a value's ``token_count`` tokens sets (>= 1)."""
    if spec.bits_per_token is not None:
        return spec.bits_per_token
    assert spec.bits is not None
    return max(1, (spec.bits + token_count // 2) // token_count)  # round half up


def xor_fold(clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Primitive hardening: bit i of the result is bit i XOR bit i + L/2 (halves the length).

    Keyless: it hides bit patterns from pattern mining but adds no secret.
    """
    half = clks.shape[1] // 2
    return np.ascontiguousarray(clks[:, :half] ^ clks[:, half:])


def keyed_permutation(key: bytes, length: int) -> npt.NDArray[np.int64]:
    """Primitive: a Fisher-Yates permutation of ``range(length)`` driven by HMAC-SHA256(key,
    u64be(counter)) words, with rejection so every permutation is equally likely."""
    order = np.arange(length, dtype=np.int64)
    words: list[int] = []
    counter = 0

    def draw() -> int:
        nonlocal counter
        if not words:
            digest = hmac.digest(key, counter.to_bytes(8, "big"), "sha256")
            counter += 1
            words.extend(reversed(_WORDS.unpack(digest)))
        return words.pop()

    for index in range(length - 1, 0, -1):
        span = index + 1
        limit = (1 << 32) - (1 << 32) % span
        while (word := draw()) >= limit:
            pass
        other = word % span
        order[index], order[other] = order[other], order[index]
    return order


def balance(
    clks: npt.NDArray[np.uint64], permutation: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """Primitive hardening: append the complement, then permute the 2L bits with a keyed
    permutation. Every output has exactly L bits set, hiding how many tokens a record had."""
    doubled = np.concatenate([clks, ~clks], axis=1)
    bits = np.unpackbits(doubled.view(np.uint8), axis=1, bitorder="little")
    packed = np.packbits(bits[:, permutation], axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8")


class _FieldEncoder:
    """Bit masks for one field's values, under its key, with bounded caches."""

    __slots__ = ("_clk_bits", "_hashing", "_key", "_token_masks", "_value_masks", "spec")

    def __init__(self, spec: FieldSpec, *, key: bytes, clk_bits: int, hashing: str) -> None:
        self.spec = spec
        self._key = key
        self._clk_bits = clk_bits
        self._hashing = hashing
        self._token_masks: dict[str, list[int]] = {}
        self._value_masks: dict[str, int] = {}

    def _token_mask(self, token: str, count: int) -> int:
        # One entry per token holds the masks of its first 1, 2, ... positions, so a token
        # weighted differently in values of different lengths is hashed only once.
        prefixes = self._token_masks.get(token)
        if prefixes is None or len(prefixes) <= count:
            wanted = max(count, 8)  # one HMAC block gives 8 positions (at 1024 bits)
            prefixes = [0]
            for position in token_positions(
                self._key, token, wanted, clk_bits=self._clk_bits, hashing=self._hashing
            ):
                prefixes.append(prefixes[-1] | (1 << position))
            if len(self._token_masks) >= _CACHE_LIMIT:
                self._token_masks.clear()
            self._token_masks[token] = prefixes
        return prefixes[count]

    def mask(self, value: str) -> int:
        mask = self._value_masks.get(value)
        if mask is not None:
            return mask
        mask = 0
        token_masks = self._token_masks
        for spec in self.spec.tokens:
            tokens = tokenise(value, spec)
            if tokens:
                count = bits_for_token(spec, len(tokens))
                for token in tokens:
                    prefixes = token_masks.get(token)  # inlined _token_mask: the hot loop
                    if prefixes is not None and len(prefixes) > count:
                        mask |= prefixes[count]
                    else:
                        mask |= self._token_mask(token, count)
        if len(self._value_masks) >= _CACHE_LIMIT:
            self._value_masks.clear()
        self._value_masks[value] = mask
        return mask


class ClkEncoder:
    """The encode recipe: normalised values of a record, in schema field order, to its CLK.

    Holds only keys derived for this project and schema, never the secret itself; build one
    per encoder run and let it go when the run ends.
    """

    def __init__(self, schema: LinkageSchema, secret: LinkageSecret, *, project_id: str) -> None:
        fingerprint = schema.fingerprint
        self.schema = schema
        self.project_id = project_id
        self.schema_fingerprint = fingerprint
        self.kcv = key_check_value(secret, project_id=project_id)
        self._fields = [
            _FieldEncoder(
                spec,
                key=derive_field_key(
                    secret,
                    project_id=project_id,
                    schema_fingerprint=fingerprint,
                    key_group=spec.key_label,
                ),
                clk_bits=schema.clk_bits,
                hashing=schema.hashing,
            )
            for spec in schema.fields
        ]
        self._clk_bytes = schema.clk_bits // 8
        self._permutation: npt.NDArray[np.int64] | None = None
        if schema.hardening == "balance":
            hardening_key = derive_hardening_key(
                secret, project_id=project_id, schema_fingerprint=fingerprint, method="balance"
            )
            self._permutation = keyed_permutation(hardening_key, 2 * schema.clk_bits)

    def __repr__(self) -> str:
        return f"ClkEncoder(schema={self.schema.name!r}, project_id={self.project_id!r})"

    @property
    def encoded_bits(self) -> int:
        """Length of the CLKs this encoder emits (after hardening)."""
        return self.schema.encoded_bits

    @property
    def field_count(self) -> int:
        return len(self._fields)

    def field_mask(self, index: int, value: str) -> int:
        """The bits one normalised value of field ``index`` sets, as an int (cached)."""
        return self._fields[index].mask(value)

    def pack(self, masks: Sequence[int]) -> npt.NDArray[np.uint64]:
        """Unhardened record masks -> hardened ``(records, encoded_bits // 64)`` uint64 CLKs."""
        size = self._clk_bytes
        packed = b"".join([mask.to_bytes(size, "little") for mask in masks])
        clks = np.frombuffer(packed, dtype="<u8").reshape(-1, size // 8).astype(np.uint64)
        return self.harden(clks)

    def record_mask(self, values: Sequence[str | None]) -> int:
        """The unhardened CLK of one record as an int (bit i = CLK bit i)."""
        mask = 0
        for field, value in zip(self._fields, values, strict=True):
            if value is not None:
                mask |= field.mask(value)
        return mask

    def harden(self, clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        """Apply the schema's hardening to a block of unhardened CLKs."""
        if self.schema.hardening == "xor-fold":
            return xor_fold(clks)
        if self.schema.hardening == "balance":
            assert self._permutation is not None
            return balance(clks, self._permutation)
        return clks

    def encode_many(self, records: Iterable[Sequence[str | None]]) -> npt.NDArray[np.uint64]:
        """CLKs of many records as a ``(records, encoded_bits // 64)`` uint64 array."""
        return self.pack([self.record_mask(values) for values in records])

    def encode(self, values: Sequence[str | None]) -> bytes:
        """The CLK of one record, packed (bit i is bit i % 8 of byte i // 8)."""
        return self.encode_many([values]).tobytes()
