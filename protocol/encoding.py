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

Encoding v2 (schema version 2) is the same per field group: each group is its own Bloom
filter of its own length, its fields' keys are derived per group (protocol/keys.py), a
salted tokeniser's tokens carry another field's value (protocol/tokens.py), and each group's
hardening chain (protocol/hardening.py) runs on its bits alone, leaving a group with no bits
all zero. The record's encoding is its groups' hardened CLKs in declared order
(protocol/clk_layout.py).

Two paths give the same bits. The per-value path (:meth:`ClkEncoder.encode`) holds bounded
caches (token -> bit mask, value -> bit mask) as Python ints, so a repeated name costs a
dictionary lookup. The column path (:meth:`ClkEncoder.field_masks`, what an encoder run uses)
takes many distinct values of one field at once and works out n-gram tokens as integer codes
in numpy: the windows of every value, their distinct codes, each distinct code hashed once,
one mask per (token, bit count) and an OR-reduce per value, so the Python work is per
distinct token, not per token occurrence. Tokens it cannot express as codes (other methods,
long or unusual values) go through the per-value path. The caches key on tokens and values
only, never on the key, and die with the encoder.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import hmac
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from protocol.clk_layout import ClkLayout
from protocol.errors import InvariantError
from protocol.hardening import (
    ChainHardener,
    RandomBytes,
    balance,
    fresh_random_bytes,
    keyed_permutation,
    xor_fold,
)
from protocol.keys import (
    derive_field_key,
    derive_group_field_key,
    derive_group_hardening_key,
    derive_hardening_key,
    key_check_value,
)
from protocol.schema import FieldSpec, LinkageSchema, TokenSpec
from protocol.secret import LinkageSecret
from protocol.tokens import PAD, salted_token, tokenise

__all__ = [
    "ClkEncoder",
    "balance",
    "bits_for_token",
    "keyed_permutation",
    "token_positions",
    "token_positions_many",
    "xor_fold",
]

Salts = Mapping[str, str | None]
"""A record's normalised values of the fields that salt a field's tokens, by field name."""

_WORDS = struct.Struct(">8I")
_CACHE_LIMIT = 200_000  # entries per cache; cleared when full so memory stays flat

# The column path codes an n-gram as its code points, 21 bits each (every code point fits),
# and a positional n-gram's index above them; it takes values up to _CODED_LENGTH characters
# (so an index fits in 6 bits) and n-grams whose code fits in 64 bits.
_CODE_POINT_BITS = 21
_CODE_POINT_MASK = (1 << _CODE_POINT_BITS) - 1
_CODED_LENGTH = 64
_NO_TOKEN = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # above every code: sorts last, never a token
_BATCH = 8192  # values per column step: bounds the (token occurrences, words) gather
# TokenSpec attributes the column path understands. A spec that sets a newer option away from
# its default goes to the per-value path until the column path learns the option (a default
# keeps the old tokens, or the golden vectors would change).
_CODED_SPEC_ATTRIBUTES = frozenset(
    {"method", "size", "padded", "positional", "algorithm", "bits", "bits_per_token", "words"}
)


def _coded(spec: TokenSpec) -> bool:
    """Whether the column path can work out ``spec``'s tokens as integer codes."""
    if spec.method != "ngram" or spec.size < 1:
        return False
    for item in dataclasses.fields(spec):
        if item.name not in _CODED_SPEC_ATTRIBUTES and getattr(spec, item.name) != item.default:
            return False
    index_bits = 6 if spec.positional else 0
    return spec.size * _CODE_POINT_BITS + index_bits <= 64


_ASCII_BASE = 128  # the compiled path codes an ASCII n-gram as its bytes in base 128
_DENSE_SIZE = 2  # ... for n-grams up to this size (a table of 128 ** size entries per batch)
_NGRAM_MASK_WORDS = 1 << 21  # its (n-gram, bit count) -> mask table per call: 16 MiB at most


def _dense(spec: TokenSpec) -> bool:
    """Whether the compiled path takes ``spec``'s ASCII values (a coded, plain n-gram)."""
    return _coded(spec) and not spec.positional and spec.size <= _DENSE_SIZE


def _token_of_code(code: int, spec: TokenSpec) -> str:
    """The token string an n-gram code stands for (the inverse of the column path's coding)."""
    size = spec.size
    gram = "".join(
        chr((code >> (_CODE_POINT_BITS * (size - 1 - place))) & _CODE_POINT_MASK)
        for place in range(size)
    )
    if spec.positional:
        return f"p{size}:{code >> (_CODE_POINT_BITS * size)}:{gram}"
    return f"g{size}:{gram}"


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


def token_positions_many(
    key: bytes, tokens: Sequence[str], count: int, *, clk_bits: int, hashing: str
) -> npt.NDArray[np.int64]:
    """Primitive: :func:`token_positions` of many tokens at once, as a ``(tokens, count)``
    array. The first ``ceil(count / 8)`` blocks of every token are hashed in one pass and
    read as words in numpy; a token with a rejected word among its first ``count`` (rare:
    at most clk_bits in 2**32 per word) is worked out one by one instead.

    Use :class:`ClkEncoder`; this is exposed for the reference tests.
    """
    blocks = -(-count // 8)
    prefixes = [block.to_bytes(4, "big") for block in range(blocks)]
    messages = [prefix + token.encode("utf-8") for token in tokens for prefix in prefixes]
    # The key absorbed once (HMAC's inner and outer pads, BLAKE2b's key block), then copied
    # per message: the same digests as hashing each message afresh, a third less time.
    keyed: hmac.HMAC | hashlib.blake2b = (
        hmac.new(key, digestmod="sha256")
        if hashing == "hmac-sha256"
        else hashlib.blake2b(key=key, digest_size=32)
    )
    digests = list(map(functools.partial(_keyed_digest, keyed), messages))
    words = np.frombuffer(b"".join(digests), dtype=">u4").reshape(len(tokens), 8 * blocks)
    words = words[:, :count].astype(np.int64)
    limit = (1 << 32) - (1 << 32) % clk_bits
    positions = words % clk_bits
    for index in np.flatnonzero((words >= limit).any(axis=1)).tolist():
        positions[index] = token_positions(
            key, tokens[index], count, clk_bits=clk_bits, hashing=hashing
        )
    return positions


def _keyed_digest(keyed: hmac.HMAC | hashlib.blake2b, message: bytes) -> bytes:
    """The digest of ``message`` under a hash or HMAC that has absorbed its key only."""
    state = keyed.copy()
    state.update(message)
    return state.digest()


def bits_for_token(spec: TokenSpec, token_count: int) -> int:
    """Primitive: how many bits each of a value's ``token_count`` tokens sets (>= 1)."""
    if spec.bits_per_token is not None:
        return spec.bits_per_token
    if spec.bits is None:
        raise InvariantError("a token spec sets bits per token or bits per value")
    return max(1, (spec.bits + token_count // 2) // token_count)  # round half up


class _FieldEncoder:
    """Bit masks for one field's values, under its key, with bounded caches."""

    __slots__ = (
        "_clk_bits",
        "_code_positions_cache",
        "_dense_tables",
        "_hashing",
        "_key",
        "_plain_specs",
        "_salted_masks",
        "_salted_specs",
        "_token_masks",
        "_value_masks",
        "spec",
    )

    def __init__(self, spec: FieldSpec, *, key: bytes, clk_bits: int, hashing: str) -> None:
        self.spec = spec
        self._key = key
        self._clk_bits = clk_bits
        self._hashing = hashing
        self._plain_specs = tuple(token for token in spec.tokens if token.salt is None)
        self._salted_specs = tuple(token for token in spec.tokens if token.salt is not None)
        self._token_masks: dict[str, list[int]] = {}
        self._value_masks: dict[str, int] = {}
        self._salted_masks: dict[tuple[str, tuple[str | None, ...]], int] = {}
        self._code_positions_cache: dict[TokenSpec, dict[int, list[int]]] = {}
        self._dense_tables: dict[
            TokenSpec,
            tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]],
        ] = {}

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

    def _spec_mask(self, value: str, spec: TokenSpec, salt: str | None = None) -> int:
        """The bits one tokeniser's tokens of ``value`` set (per-value path), each token salted
        with ``salt`` when given."""
        mask = 0
        tokens = tokenise(value, spec)
        if salt is not None:
            tokens = frozenset(salted_token(token, salt) for token in tokens)
        if tokens:
            count = bits_for_token(spec, len(tokens))
            token_masks = self._token_masks
            for token in tokens:
                prefixes = token_masks.get(token)  # inlined _token_mask: the hot loop
                if prefixes is not None and len(prefixes) > count:
                    mask |= prefixes[count]
                else:
                    mask |= self._token_mask(token, count)
        return mask

    def mask(self, value: str, salts: Salts | None = None) -> int:
        """The bits ``value`` sets: its unsalted tokens' (cached per value), and its salted
        tokens' for every salt present in ``salts``."""
        mask = self._value_masks.get(value)
        if mask is None:
            mask = 0
            for spec in self._plain_specs:
                mask |= self._spec_mask(value, spec)
            if len(self._value_masks) >= _CACHE_LIMIT:
                self._value_masks.clear()
            self._value_masks[value] = mask
        if self._salted_specs:
            mask |= self.salted_mask(value, salts or {})
        return mask

    def salted_mask(self, value: str, salts: Salts) -> int:
        """The bits of ``value``'s salted tokens; a tokeniser whose salt is missing sets none
        (never salted with an empty value, which would mark every record without it)."""
        key = (value, tuple(salts.get(spec.salt or "") for spec in self._salted_specs))
        mask = self._salted_masks.get(key)
        if mask is None:
            mask = 0
            for spec, salt in zip(self._salted_specs, key[1], strict=True):
                if salt is not None:
                    mask |= self._spec_mask(value, spec, salt)
            if len(self._salted_masks) >= _CACHE_LIMIT:
                self._salted_masks.clear()
            self._salted_masks[key] = mask
        return mask

    def masks(
        self, values: Sequence[str], salts: Mapping[str, Sequence[str | None]] | None = None
    ) -> npt.NDArray[np.uint64]:
        """Column path: the bits of many values as a ``(values, clk_bits // 64)`` array.
        ``salts`` holds, per salting field, its values aligned with ``values``."""
        words = self._clk_bits // 64
        result = np.zeros((len(values), words), dtype=np.uint64)
        salt_columns = salts or {}
        # ASCII n-grams over the whole column by the compiled kernel; what it leaves (sorted
        # offsets) goes to the numpy path below, batch by batch.
        ascii_rest = {
            spec: self._or_ascii_masks(values, spec, result)
            for spec in self._plain_specs
            if _dense(spec)
        }
        for start in range(0, len(values), _BATCH):
            batch = values[start : start + _BATCH]
            block = result[start : start + len(batch)]
            leftover: dict[int, int] = {}  # value offset -> bits from the per-value path
            for spec in self._plain_specs:
                slow: Iterable[int]
                if spec in ascii_rest:
                    rest = ascii_rest[spec]
                    low = bisect.bisect_left(rest, start)
                    high = bisect.bisect_left(rest, start + len(batch))
                    local = [offset - start for offset in rest[low:high]]
                    slow = self._or_coded_subset(batch, local, spec, block)
                elif _coded(spec):
                    slow = self._or_coded_masks(batch, spec, block)
                else:
                    slow = range(len(batch))
                for offset in slow:
                    mask = self._spec_mask(batch[offset], spec)
                    leftover[offset] = leftover.get(offset, 0) | mask
            for spec in self._salted_specs:
                salt_column = salt_columns.get(spec.salt or "")
                if salt_column is not None:
                    self._or_salted_masks(
                        batch, salt_column[start : start + len(batch)], spec, block
                    )
            if leftover:
                offsets = list(leftover)
                size = self._clk_bits // 8
                extra = np.frombuffer(
                    b"".join([leftover[offset].to_bytes(size, "little") for offset in offsets]),
                    dtype="<u8",
                ).reshape(-1, words)
                block[np.asarray(offsets, dtype=np.intp)] |= extra
        return result

    def _or_salted_masks(
        self,
        values: Sequence[str],
        salts: Sequence[str | None],
        spec: TokenSpec,
        block: npt.NDArray[np.uint64],
    ) -> None:
        """OR the bits of ``spec``'s salted tokens into ``block`` (one row per value): salted
        tokens are nearly all distinct, so their positions are worked out in bulk
        (:func:`token_positions_many`), not cached."""
        rows: list[int] = []
        tokens: list[str] = []
        counts: list[int] = []
        for offset, (value, salt) in enumerate(zip(values, salts, strict=True)):
            if salt is None:
                continue  # never salted with an empty value
            found = tokenise(value, spec)
            if not found:
                continue
            count = bits_for_token(spec, len(found))
            for token in found:
                rows.append(offset)
                tokens.append(salted_token(token, salt))
                counts.append(count)
        if not tokens:
            return
        bits = np.zeros((len(values), self._clk_bits), dtype=np.uint8)
        row_array, count_array = np.asarray(rows), np.asarray(counts)
        for count in np.unique(count_array).tolist():
            chosen = np.flatnonzero(count_array == count)
            positions = token_positions_many(
                self._key,
                [tokens[index] for index in chosen.tolist()],
                count,
                clk_bits=self._clk_bits,
                hashing=self._hashing,
            )
            bits[row_array[chosen][:, None], positions] = 1
        block |= np.packbits(bits, axis=1, bitorder="little").view("<u8")

    def _or_coded_subset(
        self,
        values: Sequence[str],
        offsets: list[int],
        spec: TokenSpec,
        block: npt.NDArray[np.uint64],
    ) -> list[int]:
        """:meth:`_or_coded_masks` for ``values[offsets]`` only (into those rows of
        ``block``); returns the offsets left to the per-value path."""
        if not offsets:
            return []
        part = np.zeros((len(offsets), block.shape[1]), dtype=np.uint64)
        slow = self._or_coded_masks([values[offset] for offset in offsets], spec, part)
        block[np.asarray(offsets, dtype=np.intp)] |= part
        return [offsets[offset] for offset in slow]

    def _or_ascii_masks(
        self, values: Sequence[str], spec: TokenSpec, block: npt.NDArray[np.uint64]
    ) -> list[int]:
        """OR the bits of ``spec``'s n-grams into ``block`` (one row per value) for every
        value that is ASCII and at least one n-gram long, in compiled loops
        (protocol/ngram_kernel.py); return the offsets of the other values."""
        from protocol.ngram_kernel import ngram_counts, ngram_masks  # numba: only when used

        size = spec.size
        if spec.words == "first":  # as tokenise(): n-grams of the first word only
            values = [value.split(" ", 1)[0] for value in values]
        pad = size - 1 if spec.padded else 0
        joined = "".join(values)
        rows = np.arange(len(values), dtype=np.int64)
        rest: list[int] = []
        if not joined.isascii():  # rare in a column: find the values that are not
            ascii_values = np.fromiter(map(str.isascii, values), bool, len(values))
            rest = np.flatnonzero(~ascii_values).tolist()
            rows = rows[ascii_values]
            values = [values[offset] for offset in rows.tolist()]
            joined = "".join(values)
        if not values:
            return rest
        data = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=offsets[1:])
        most = np.zeros(_ASCII_BASE**size, dtype=np.int64)
        counts = ngram_counts(
            data, offsets, size, pad, ord(PAD), spec.bits or 0, spec.bits_per_token or 0, most
        )
        row_of, positions = self._dense_positions(spec, most)
        ngram_masks(
            data,
            offsets,
            size,
            pad,
            ord(PAD),
            counts,
            row_of,
            positions,
            block,
            rows,
            _NGRAM_MASK_WORDS,
        )
        short = rows[counts == 0]  # no n-gram at all: the per-value path says what it sets
        if len(short):
            rest = sorted(rest + short.tolist())
        return rest

    def _dense_positions(
        self, spec: TokenSpec, most: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The compiled path's table for ``spec``: ``positions[row_of[code]]`` holds the
        first positions of the n-gram with base-128 code ``code``, at least ``most[code]`` of
        them for every code the call uses. Kept for the encoder's life (at most 128 ** size
        rows, each n-gram hashed once); only n-grams new or wanting more bits are hashed."""
        row_of, positions, have = self._dense_tables.get(
            spec,
            (
                np.full(_ASCII_BASE**spec.size, -1, dtype=np.int64),
                np.zeros((0, 8), dtype=np.int64),
                np.zeros(0, dtype=np.int64),
            ),
        )
        used = np.flatnonzero(most)
        rows = row_of[used]
        known = rows >= 0
        enough = np.zeros(len(used), dtype=bool)
        enough[known] = have[rows[known]] >= most[used][known]
        short = np.flatnonzero(~enough)
        if len(short):
            fresh = used[short][rows[short] < 0]
            row_of[fresh] = len(have) + np.arange(len(fresh))
            width = max(positions.shape[1], int(most[used].max()))
            grown = np.zeros((len(have) + len(fresh), width), dtype=np.int64)
            grown[: len(have), : positions.shape[1]] = positions
            have = np.concatenate([have, np.zeros(len(fresh), dtype=np.int64)])
            positions = grown
            for dense in used[short].tolist():
                count = int(most[dense])
                code = 0  # the numpy path's code of the same n-gram: 21 bits a character
                for place in range(spec.size - 1, -1, -1):
                    digit = (dense // _ASCII_BASE**place) % _ASCII_BASE
                    code = (code << _CODE_POINT_BITS) | digit
                found = self._code_positions(code, count, spec)
                row = row_of[dense]
                positions[row, : len(found)] = found[: positions.shape[1]]
                have[row] = min(len(found), positions.shape[1])
            self._dense_tables[spec] = (row_of, positions, have)
        return row_of, positions

    def _or_coded_masks(
        self, values: Sequence[str], spec: TokenSpec, block: npt.NDArray[np.uint64]
    ) -> list[int]:
        """OR the bits of ``spec``'s n-grams into ``block`` (one row per value) for every value
        it can code; return the offsets of the values left to the per-value path (shorter
        than one n-gram, longer than _CODED_LENGTH, or holding NUL, which numpy's fixed-width
        strings would drop)."""
        size = spec.size
        if spec.words == "first":  # as tokenise(): n-grams of the first word only
            values = [value.split(" ", 1)[0] for value in values]
        pad = PAD * (size - 1) if spec.padded else ""
        texts = [pad + value + pad for value in values] if pad else list(values)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        fits = (lengths >= size) & (lengths <= _CODED_LENGTH)
        if "\x00" in "".join(texts):
            fits &= np.fromiter(("\x00" not in text for text in texts), bool, len(texts))
        coded = np.flatnonzero(fits)
        slow = np.flatnonzero(~fits).tolist()
        if len(coded) == 0:
            return slow
        if slow:
            texts = [texts[offset] for offset in coded.tolist()]
            lengths = lengths[coded]
        width = int(lengths.max())
        points = (
            np.array(texts, dtype=f"U{width}").view(np.uint32).reshape(len(texts), width)
        ).astype(np.uint64)
        windows = width - size + 1
        codes = np.zeros((len(texts), windows), dtype=np.uint64)
        for place in range(size):
            codes = (codes << np.uint64(_CODE_POINT_BITS)) | points[:, place : place + windows]
        if spec.positional:
            codes |= np.arange(windows, dtype=np.uint64)[None, :] << np.uint64(
                _CODE_POINT_BITS * size
            )
        codes[np.arange(windows)[None, :] > (lengths - size)[:, None]] = _NO_TOKEN
        # Tokens are a set: keep each distinct code of a value once (positional codes differ
        # by their index already). Every coded value has at least one token.
        codes.sort(axis=1)
        distinct = codes != _NO_TOKEN
        distinct[:, 1:] &= codes[:, 1:] != codes[:, :-1]
        token_counts = distinct.sum(axis=1)
        if spec.bits_per_token is not None:
            counts = np.full(len(texts), spec.bits_per_token, dtype=np.int64)
        else:
            if spec.bits is None:
                raise InvariantError("a token spec sets bits per token or bits per value")
            counts = np.maximum(1, (spec.bits + token_counts // 2) // token_counts)
        pair_rows, pair_columns = np.nonzero(distinct)  # row-major: rows ascending
        pair_counts = counts[pair_rows]
        unique_codes, code_of_pair = np.unique(codes[pair_rows, pair_columns], return_inverse=True)
        # A (token, bit count) combination is one mask; a chunk holds few of them.
        most = int(pair_counts.max())
        combos, combo_of_pair = np.unique(
            code_of_pair * (most + 1) + pair_counts, return_inverse=True
        )
        combo_tokens, combo_counts = np.divmod(combos, most + 1)
        table = np.zeros((len(unique_codes), most), dtype=np.int64)
        wanted = np.zeros(len(unique_codes), dtype=np.int64)
        np.maximum.at(wanted, combo_tokens, combo_counts)
        cache = self._code_positions_cache.setdefault(spec, {})  # hashing a spec is not free
        for index, (code, count) in enumerate(
            zip(unique_codes.tolist(), wanted.tolist(), strict=True)
        ):
            positions = cache.get(code)
            if positions is None or len(positions) < count:
                positions = self._code_positions(code, count, spec)
            table[index, :count] = positions[:count]
        take = np.arange(most)[None, :] < combo_counts[:, None]
        combo_bits = np.zeros((len(combos), self._clk_bits), dtype=np.uint8)
        flat = (np.arange(len(combos), dtype=np.int64)[:, None] * self._clk_bits) + table[
            combo_tokens
        ]
        combo_bits.reshape(-1)[flat[take]] = 1
        combo_masks = np.packbits(combo_bits, axis=1, bitorder="little").view("<u8")
        starts = np.flatnonzero(np.diff(pair_rows, prepend=-1))
        block[coded] |= np.bitwise_or.reduceat(combo_masks[combo_of_pair], starts, axis=0)
        return slow

    def _code_positions(self, code: int, count: int, spec: TokenSpec) -> list[int]:
        """The first ``count`` positions of the n-gram ``code`` stands for (cached per
        tokeniser and code, never per key)."""
        cache = self._code_positions_cache.setdefault(spec, {})
        positions = cache.get(code)
        if positions is None or len(positions) < count:
            positions = token_positions(
                self._key,
                _token_of_code(code, spec),
                max(count, 8),
                clk_bits=self._clk_bits,
                hashing=self._hashing,
            )
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[code] = positions
        return positions[:count]


class ClkEncoder:
    """The encode recipe: normalised values of a record, in schema field order, to its CLK
    (schema v1) or its groups' CLKs concatenated (schema v2, :attr:`layout` says which words
    are which group).

    Holds only keys derived for this project and schema, never the secret itself; build one
    per encoder run and let it go when the run ends. ``random_bytes`` feeds BLIP hardening
    (default: a fresh ChaCha20 stream keyed from ``os.urandom``; tests inject their own).
    """

    def __init__(
        self,
        schema: LinkageSchema,
        secret: LinkageSecret,
        *,
        project_id: str,
        random_bytes: RandomBytes | None = None,
    ) -> None:
        fingerprint = schema.fingerprint
        self.schema = schema
        self.project_id = project_id
        self.schema_fingerprint = fingerprint
        self.kcv = key_check_value(secret, project_id=project_id)
        self.layout: ClkLayout = schema.layout
        """The encoding after hardening: groups, lengths and hardening descriptors."""
        self.input_layout: ClkLayout = schema.input_layout
        """The groups before hardening: where each field's bits are set."""
        self._group_of = [schema.group_index(index) for index in range(len(schema.fields))]
        self._fields = []
        for spec, group_index in zip(schema.fields, self._group_of, strict=True):
            group = self.input_layout.groups[group_index]
            if schema.grouped:
                key = derive_group_field_key(
                    secret,
                    project_id=project_id,
                    schema_fingerprint=fingerprint,
                    group=group.name,
                    key_group=spec.key_label,
                )
            else:
                key = derive_field_key(
                    secret,
                    project_id=project_id,
                    schema_fingerprint=fingerprint,
                    key_group=spec.key_label,
                )
            self._fields.append(
                _FieldEncoder(spec, key=key, clk_bits=group.bits, hashing=schema.hashing)
            )
        position = {spec.name: index for index, spec in enumerate(schema.fields)}
        # Per field, the (name, field index) of each field that salts its tokens.
        self._salt_sources = [
            tuple((name, position[name]) for name in spec.salts) for spec in schema.fields
        ]
        self._input_bytes = self.input_layout.total_bits // 8
        self._permutation: npt.NDArray[np.int64] | None = None
        self._hardeners: list[ChainHardener] = []
        if schema.grouped:
            stream: RandomBytes | None = random_bytes
            for group_spec in schema.groups:
                if stream is None and any(step.method == "blip" for step in group_spec.hardening):
                    stream = fresh_random_bytes()
                keys = [
                    derive_group_hardening_key(
                        secret,
                        project_id=project_id,
                        schema_fingerprint=fingerprint,
                        group=group_spec.name,
                        step=index,
                        method=str(step.method),
                    )
                    if step.keyed
                    else None
                    for index, step in enumerate(group_spec.hardening)
                ]
                self._hardeners.append(
                    ChainHardener(
                        group_spec.hardening,
                        input_bits=group_spec.clk_bits,
                        keys=keys,
                        random_bytes=stream or _no_randomness,
                    )
                )
        elif schema.hardening == "balance":
            hardening_key = derive_hardening_key(
                secret, project_id=project_id, schema_fingerprint=fingerprint, method="balance"
            )
            self._permutation = keyed_permutation(hardening_key, 2 * schema.clk_bits)

    def __repr__(self) -> str:
        return f"ClkEncoder(schema={self.schema.name!r}, project_id={self.project_id!r})"

    @property
    def draws_random_bytes(self) -> bool:
        """Whether encoding draws random bytes (BLIP hardening): a copy of this encoder in
        another process would draw the same ones, so each process builds its own."""
        return any(
            step.method == "blip" for group in self.schema.groups for step in group.hardening
        )

    @property
    def encoded_bits(self) -> int:
        """Length of the encodings this encoder emits (after hardening, every group)."""
        return self.layout.total_bits

    def field_word_range(self, index: int) -> tuple[int, int]:
        """Where field ``index``'s bits go: ``(start, stop)`` words of an unhardened record
        (its group's words in :attr:`input_layout`)."""
        return self.input_layout.word_range(self._group_of[index])

    def field_salts(self, index: int) -> tuple[str, ...]:
        """Names of the fields whose values salt field ``index``'s tokens (often none)."""
        return self._fields[index].spec.salts

    def field_mask(self, index: int, value: str, salts: Salts | None = None) -> int:
        """The bits one normalised value of field ``index`` sets within its group, as an int
        (cached). ``salts``: the record's values of :meth:`field_salts` (missing: none)."""
        return self._fields[index].mask(value, salts)

    def field_masks(
        self,
        index: int,
        values: Sequence[str],
        salts: Mapping[str, Sequence[str | None]] | None = None,
    ) -> npt.NDArray[np.uint64]:
        """Column path: the bits many normalised values of field ``index`` set in its group,
        as a ``(values, group words)`` uint64 array (row i is ``field_mask(index, values[i])``).
        ``salts`` maps each of :meth:`field_salts` to values aligned with ``values``. Pass
        each distinct value (or value and salts) once: the work is per value."""
        return self._fields[index].masks(values, salts)

    def pack(self, masks: Sequence[int]) -> npt.NDArray[np.uint64]:
        """Unhardened record masks -> hardened ``(records, encoded_bits // 64)`` uint64 CLKs."""
        size = self._input_bytes
        packed = b"".join([mask.to_bytes(size, "little") for mask in masks])
        clks = np.frombuffer(packed, dtype="<u8").reshape(-1, size // 8).astype(np.uint64)
        return self.harden(clks)

    def record_mask(self, values: Sequence[str | None]) -> int:
        """The unhardened encoding of one record as an int (bit i = bit i of the
        :attr:`input_layout` record: every group's bits at its offset)."""
        mask = 0
        offsets = self.input_layout.word_offsets()
        for field, group, sources, value in zip(
            self._fields, self._group_of, self._salt_sources, values, strict=True
        ):
            if value is not None:
                salts = {name: values[source] for name, source in sources} if sources else None
                mask |= field.mask(value, salts) << (64 * offsets[group])
        return mask

    def harden(self, clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        """Apply the schema's hardening to a block of unhardened records
        (``(records, input words)`` -> ``(records, encoded_bits // 64)``)."""
        if self.schema.grouped:
            # Each group's chain reads its columns of ``clks`` and writes its columns of the
            # result in place (a diffusion writes there directly): no copy per group.
            result = np.empty((len(clks), self.layout.total_words), dtype=np.uint64)
            for index, hardener in enumerate(self._hardeners):
                start, stop = self.input_layout.word_range(index)
                low, high = self.layout.word_range(index)
                hardener.apply(clks[:, start:stop], out=result[:, low:high])
            return result
        if self.schema.hardening == "xor-fold":
            return xor_fold(clks)
        if self.schema.hardening == "balance":
            if self._permutation is None:
                raise InvariantError("balance hardening was built without its permutation")
            return balance(clks, self._permutation)
        return clks

    def encode_many(self, records: Iterable[Sequence[str | None]]) -> npt.NDArray[np.uint64]:
        """Encodings of many records as a ``(records, encoded_bits // 64)`` uint64 array."""
        return self.pack([self.record_mask(values) for values in records])

    def encode(self, values: Sequence[str | None]) -> bytes:
        """The encoding of one record, packed (bit i is bit i % 8 of byte i // 8)."""
        return self.encode_many([values]).tobytes()


def _no_randomness(count: int) -> bytes:
    raise AssertionError("only BLIP hardening draws random bytes")  # pragma: no cover
