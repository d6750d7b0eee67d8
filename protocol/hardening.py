"""Stage 3b, harden: what each hardening step does to a group's bits, and how it is named.

A schema v2 group (docs/schema.md) names a chain of at most three steps, applied in order to
the group's Bloom filter after every field's bits are set:

* ``xor-fold``: bit i XOR bit i + L/2 (halves the length; keyless);
* ``balance``: append the complement, then a keyed permutation (doubles the length);
* ``rule90``: bit i = bit i-1 XOR bit i+1, cyclically (keyless);
* ``diffusion`` (Armknecht et al. 2023, "BAD"): output bit j = XOR of ``width`` input bits
  at positions drawn under the group's hardening key. It is linear over GF(2): every
  encoding lies in the column space of one sparse matrix, whose columns a curious linkage unit
  finds as that space's lowest-weight vectors and then solves each encoding back to its plain
  Bloom filter (``bloomlink/attacks/linear.py``; docs/attacks.md). Kept for old schemas;
* ``nonlinear-diffusion``: output bit j = XOR of ``width`` keyed input bits, XOR the AND of
  two more: ``y_j = x_a ^ ... ^ (x_c & x_d)``. The AND terms leave no linear structure (the
  encodings span the whole output space), and similarity falls about as with one more tap;
* ``blip``: flip each bit independently with probability ``flip_per_65536 / 65536`` (fresh
  randomness every encode).

A group with no bits set (every field of it missing) stays all zero whatever the chain: the
linkage unit tells "missing" from "different" by it (protocol/clk_layout.py).

Every step has a canonical descriptor (``diffusion:width=4,output_bits=1024``; a chain joins
steps with ``+``; no steps is ``none``): ASCII from a fixed grammar with whole-number
parameters, so it can travel in the encoded file, the upload header and the signed manifest
without carrying anything free-text, and any language reproduces it exactly.

The transforms here are primitives: use :class:`protocol.encoding.ClkEncoder`, which derives
the keys and applies each group's chain. Each fast transform has a slow, obvious twin
(``*_reference``) that the property tests hold it to.
"""

from __future__ import annotations

import hmac
import math
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from protocol.errors import ConfigurationError

__all__ = [
    "FLIP_SCALE",
    "HARDENING_DESCRIPTOR_PATTERN",
    "MAX_DESCRIPTOR_BYTES",
    "MAX_HARDENING_STEPS",
    "NO_HARDENING",
    "ChainHardener",
    "HardeningMethod",
    "HardeningStep",
    "RandomBytes",
    "balance",
    "balance_reference",
    "blip",
    "blip_reference",
    "chain_output_bits",
    "check_chain",
    "describe_chain",
    "diffuse",
    "diffuse_reference",
    "diffusion_taps",
    "fresh_random_bytes",
    "keyed_permutation",
    "nonlinear_diffuse",
    "nonlinear_diffuse_reference",
    "parse_descriptor",
    "parse_hardening",
    "rule90",
    "rule90_reference",
    "xor_fold",
]

FLIP_SCALE = 65536
"""BLIP flip probabilities are whole numbers of 1/65536: exact in every language."""
MAX_HARDENING_STEPS = 3
MAX_DESCRIPTOR_BYTES = 123
"""A chain's descriptor travels in a 123-byte field of the encoded file's header."""
MAX_DIFFUSION_WIDTH = 16
MAX_BITS = 65536
NO_HARDENING = "none"

RandomBytes = Callable[[int], bytes]
"""Returns that many unpredictable bytes (BLIP's randomness; injectable for tests)."""

_WORDS = struct.Struct(">8I")


class HardeningMethod(StrEnum):
    XOR_FOLD = "xor-fold"
    BALANCE = "balance"
    RULE90 = "rule90"
    DIFFUSION = "diffusion"
    NONLINEAR_DIFFUSION = "nonlinear-diffusion"
    BLIP = "blip"


_STEP = (
    r"(?:xor-fold|balance|rule90"
    r"|(?:nonlinear-)?diffusion:width=[1-9][0-9]?,output_bits=[1-9][0-9]{1,4}"
    r"|blip:flip_per_65536=[1-9][0-9]{0,4})"
)
HARDENING_DESCRIPTOR_PATTERN = re.compile(
    rf"^(?:{NO_HARDENING}|{_STEP}(?:\+{_STEP}){{0,{MAX_HARDENING_STEPS - 1}}})$"
)
"""Every descriptor matches this (and is the canonical spelling of its steps)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HardeningStep:
    """One step of a group's hardening chain, with its whole-number parameters.

    ``width`` and ``output_bits`` are diffusion's; ``flip_per_65536`` is BLIP's; the others
    take none (zero). Build steps with :func:`parse_hardening` or :func:`parse_descriptor`,
    which check that the parameters give protection.
    """

    method: HardeningMethod
    width: int = 0
    output_bits: int = 0
    flip_per_65536: int = 0

    @property
    def keyed(self) -> bool:
        """Whether the step needs a hardening key (derived per group and step)."""
        return self.method in (
            HardeningMethod.BALANCE,
            HardeningMethod.DIFFUSION,
            HardeningMethod.NONLINEAR_DIFFUSION,
        )

    @property
    def diffuses(self) -> bool:
        """Whether the step is a diffusion layer (``width`` and ``output_bits`` apply)."""
        return self.method in (HardeningMethod.DIFFUSION, HardeningMethod.NONLINEAR_DIFFUSION)

    @property
    def flip_probability(self) -> float:
        return self.flip_per_65536 / FLIP_SCALE

    def output_length(self, input_bits: int) -> int:
        if self.method is HardeningMethod.XOR_FOLD:
            return input_bits // 2
        if self.method is HardeningMethod.BALANCE:
            return input_bits * 2
        if self.diffuses:
            return self.output_bits
        return input_bits

    def canonical(self) -> dict[str, Any]:
        """What enters the schema's canonical form (and so its fingerprint)."""
        data: dict[str, Any] = {"method": str(self.method)}
        if self.diffuses:
            data.update(width=self.width, output_bits=self.output_bits)
        if self.method is HardeningMethod.BLIP:
            data["flip_per_65536"] = self.flip_per_65536
        return data

    def descriptor(self) -> str:
        if self.diffuses:
            return f"{self.method}:width={self.width},output_bits={self.output_bits}"
        if self.method is HardeningMethod.BLIP:
            return f"blip:flip_per_65536={self.flip_per_65536}"
        return str(self.method)


def describe_chain(steps: Sequence[HardeningStep]) -> str:
    """The canonical descriptor of a chain (``none`` for no steps)."""
    return "+".join(step.descriptor() for step in steps) or NO_HARDENING


def chain_output_bits(steps: Sequence[HardeningStep], input_bits: int) -> int:
    bits = input_bits
    for step in steps:
        bits = step.output_length(bits)
    return bits


def check_chain(steps: Sequence[HardeningStep], input_bits: int) -> list[tuple[str, str]]:
    """Problems with a chain applied to ``input_bits`` bits, as ``(parameter, message)``:
    parameters that give no protection, or lengths that do not fit. Empty when usable."""
    problems: list[tuple[str, str]] = []
    if len(steps) > MAX_HARDENING_STEPS:
        problems.append(("", f"has at most {MAX_HARDENING_STEPS} steps"))
    descriptor = describe_chain(steps)
    if len(descriptor) > MAX_DESCRIPTOR_BYTES:
        problems.append(
            (
                "",
                f"has a descriptor of {len(descriptor)} bytes; at most {MAX_DESCRIPTOR_BYTES} "
                "fit the encoded file's header (use fewer or shorter steps)",
            )
        )
    bits = input_bits
    for index, step in enumerate(steps):
        where = f"[{index}]" if len(steps) > 1 else ""
        method = step.method
        if method is HardeningMethod.XOR_FOLD and bits % 128:
            problems.append(
                (f"{where}method", f"xor-fold needs a multiple of 128 bits in (here {bits})")
            )
        if method is HardeningMethod.BALANCE and 2 * bits > MAX_BITS:
            problems.append(
                (f"{where}method", f"balance would make {2 * bits} bits (> {MAX_BITS})")
            )
        if method is HardeningMethod.NONLINEAR_DIFFUSION and step.width < 1:
            problems.append(
                (f"{where}width", "must be at least 1: the linear taps XORed beside the AND term")
            )
        elif method is HardeningMethod.NONLINEAR_DIFFUSION and step.width + 2 > min(
            MAX_DIFFUSION_WIDTH, bits
        ):
            problems.append(
                (
                    f"{where}width",
                    f"must be at most {min(MAX_DIFFUSION_WIDTH, bits) - 2}: with the AND term's "
                    "two taps, similarity falls as that power, so wider makes every pair look "
                    "unrelated",
                )
            )
        if step.diffuses:
            if method is HardeningMethod.DIFFUSION and step.width < 2:
                problems.append(
                    (
                        f"{where}width",
                        "must be at least 2: with width 1 each output bit is one input bit, a "
                        "keyed bit selection with no diffusion",
                    )
                )
            elif method is HardeningMethod.DIFFUSION and step.width > min(
                MAX_DIFFUSION_WIDTH, bits
            ):
                problems.append(
                    (
                        f"{where}width",
                        f"must be at most {min(MAX_DIFFUSION_WIDTH, bits)}: similarity falls as "
                        "its power, so wider makes every pair look unrelated",
                    )
                )
            if not (64 <= step.output_bits <= MAX_BITS) or step.output_bits % 64:
                problems.append(
                    (f"{where}output_bits", f"must be a multiple of 64 between 64 and {MAX_BITS}")
                )
            elif 2 * step.output_bits < bits:
                problems.append(
                    (
                        f"{where}output_bits",
                        f"must be at least half the {bits} input bits: fewer cannot hold the "
                        "input's information, so unrelated records would collide",
                    )
                )
        if method is HardeningMethod.BLIP:
            if not 0 < step.flip_per_65536 < FLIP_SCALE // 2:
                problems.append(
                    (
                        f"{where}flip_probability",
                        "must be above 0 (no flips protect nothing) and below 0.5 (at 0.5 the "
                        "output is independent of the record)",
                    )
                )
            elif step.flip_per_65536 * bits < FLIP_SCALE:
                problems.append(
                    (
                        f"{where}flip_probability",
                        f"flips under one of the group's {bits} bits on average: no protection",
                    )
                )
        bits = step.output_length(bits)
    return problems


def _step_from_table(
    data: Mapping[str, Any], add: Callable[[str, str], None], where: str, input_bits: int
) -> HardeningStep | None:
    method_text = data.get("method")
    try:
        method = HardeningMethod(str(method_text))
    except ValueError:
        add(f"{where}.method", f"must be one of {', '.join(HardeningMethod)}")
        return None
    allowed = {"method"}
    width = output_bits = flips = 0
    readable = True
    if method in (HardeningMethod.DIFFUSION, HardeningMethod.NONLINEAR_DIFFUSION):
        allowed |= {"width", "output_bits"}
        width_value = _whole(data.get("width"), add, f"{where}.width")
        bits_value = _whole(data.get("output_bits", input_bits), add, f"{where}.output_bits")
        readable = width_value is not None and bits_value is not None
        width, output_bits = width_value or 0, bits_value or 0
    if method is HardeningMethod.BLIP:
        allowed |= {"flip_probability", "epsilon"}
        probability = _blip_probability(data, add, where)
        flips = math.floor(probability * FLIP_SCALE + 0.5) if probability is not None else 0
        if probability is not None and flips == 0:
            name = "epsilon" if "epsilon" in data else "flip_probability"
            add(f"{where}.{name}", "gives under 1 flip in 65536: no protection")
        readable = flips > 0
    unknown = sorted(set(data) - allowed)
    for key in unknown:
        add(where, f"unknown key {key!r} for {method} (allowed: {', '.join(sorted(allowed))})")
    if not readable or unknown:
        return None
    return HardeningStep(method=method, width=width, output_bits=output_bits, flip_per_65536=flips)


def _whole(value: Any, add: Callable[[str, str], None], where: str) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        add(where, "must be a whole number")
        return None
    return value


def _blip_probability(
    data: Mapping[str, Any], add: Callable[[str, str], None], where: str
) -> float | None:
    has_probability, has_epsilon = "flip_probability" in data, "epsilon" in data
    if has_probability == has_epsilon:
        add(where, "blip takes exactly one of 'flip_probability' or 'epsilon'")
        return None
    name = "flip_probability" if has_probability else "epsilon"
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        add(f"{where}.{name}", "must be a number")
        return None
    if has_epsilon:
        if value <= 0:
            add(f"{where}.epsilon", "must be above 0 (epsilon 0 would be pure noise)")
            return None
        # Randomised response: a bit is kept with probability e^eps / (1 + e^eps), so each
        # bit alone is eps-differentially private (a record's q-grams share bits: weaker).
        return 1.0 / (1.0 + math.exp(min(float(value), 700.0)))
    if not 0 < value < 0.5:
        add(
            f"{where}.flip_probability",
            "must be above 0 (no flips protect nothing) and below 0.5 (at 0.5 the output is "
            "independent of the record)",
        )
        return None
    return float(value)


def parse_hardening(
    value: Any, *, input_bits: int, where: str, add: Callable[[str, str], None]
) -> tuple[HardeningStep, ...]:
    """A schema's ``hardening`` for one group: ``"none"``, a method name, a table (method and
    parameters) or an array of those (a chain). Every problem goes to ``add(where, message)``,
    naming the parameter; returns the steps it could read."""
    items: list[Any]
    if value is None or value == NO_HARDENING or value == {"method": NO_HARDENING}:
        return ()
    items = list(value) if isinstance(value, list) else [value]
    steps: list[HardeningStep] = []
    epsilon_steps: set[int] = set()  # BLIP given as epsilon: problems name that parameter
    for index, item in enumerate(items):
        at = f"{where}[{index}]" if isinstance(value, list) else where
        if isinstance(item, str):
            item = {"method": item}
        if not isinstance(item, Mapping):
            add(at, "must be a method name or a table with 'method' and its parameters")
            continue
        if item.get("method") == NO_HARDENING:
            add(f"{at}.method", "'none' cannot be a step of a chain; leave the step out")
            continue
        step = _step_from_table(item, add, at, input_bits)
        if step is not None:
            if "epsilon" in item:
                epsilon_steps.add(len(steps))
            steps.append(step)
    if len(steps) == len(items):
        for parameter, message in check_chain(steps, input_bits):
            index_text, _, name = parameter.rpartition("]")
            index = int(index_text.lstrip("[")) if index_text else 0
            if name == "flip_probability" and index in epsilon_steps:
                name = "epsilon"
            prefix = f"{index_text}]" if index_text else ""
            add(f"{where}{prefix}{'.' if name else ''}{name}", message)
    return tuple(steps)


def parse_descriptor(text: str) -> tuple[HardeningStep, ...]:
    """The steps a canonical descriptor names; :class:`ConfigurationError` if it is not one."""
    if not isinstance(text, str) or not HARDENING_DESCRIPTOR_PATTERN.fullmatch(text):
        raise ConfigurationError("hardening descriptor does not follow the descriptor grammar")
    if text == NO_HARDENING:
        return ()
    steps: list[HardeningStep] = []
    for part in text.split("+"):
        name, _, parameters = part.partition(":")
        values = dict(item.split("=") for item in parameters.split(",")) if parameters else {}
        steps.append(
            HardeningStep(
                method=HardeningMethod(name),
                width=int(values.get("width", 0)),
                output_bits=int(values.get("output_bits", 0)),
                flip_per_65536=int(values.get("flip_per_65536", 0)),
            )
        )
    if describe_chain(steps) != text:  # e.g. leading zeros: one spelling per chain
        raise ConfigurationError("hardening descriptor is not in canonical form")
    return tuple(steps)


# -- keyed streams ---------------------------------------------------------------------------


class _KeyedWords:
    """u32 words from HMAC-SHA256(key, u64be(counter)), counter = 0, 1, ...; each block read as
    eight big-endian u32, in order. Drawn with rejection, so every value is equally likely."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0
        self._words: list[int] = []

    def below(self, span: int) -> int:
        """A uniform value in ``range(span)``: words at or above the largest multiple of
        ``span`` under 2**32 are skipped."""
        limit = (1 << 32) - (1 << 32) % span
        while True:
            if not self._words:
                digest = hmac.digest(self._key, self._counter.to_bytes(8, "big"), "sha256")
                self._counter += 1
                self._words = list(reversed(_WORDS.unpack(digest)))
            word = self._words.pop()
            if word < limit:
                return word % span


def keyed_permutation(key: bytes, length: int) -> npt.NDArray[np.int64]:
    """Primitive: a Fisher-Yates permutation of ``range(length)`` driven by HMAC-SHA256(key,
    u64be(counter)) words, with rejection so every permutation is equally likely."""
    order = np.arange(length, dtype=np.int64)
    words = _KeyedWords(key)
    for index in range(length - 1, 0, -1):
        other = words.below(index + 1)
        order[index], order[other] = order[other], order[index]
    return order


def diffusion_taps(
    key: bytes, *, input_bits: int, output_bits: int, width: int
) -> npt.NDArray[np.int64]:
    """Primitive: the input positions each output bit of a diffusion layer XORs.

    Row ``j`` holds output bit j's ``width`` distinct positions, drawn in order j = 0, 1, ...
    and within a row one after another from the key's word stream (:class:`_KeyedWords`): a
    position is ``below(input_bits)``, drawn again while it repeats one already in the row.
    """
    if width > input_bits:
        raise ConfigurationError("diffusion width cannot exceed the input bits")
    words = _KeyedWords(key)
    taps = np.empty((output_bits, width), dtype=np.int64)
    for output in range(output_bits):
        row: list[int] = []
        while len(row) < width:
            position = words.below(input_bits)
            if position not in row:
                row.append(position)
        taps[output] = row
    return taps


# -- transforms ------------------------------------------------------------------------------


def xor_fold(clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Primitive hardening: bit i of the result is bit i XOR bit i + L/2 (halves the length).

    Keyless: it hides bit patterns from pattern mining but adds no secret.
    """
    half = clks.shape[1] // 2
    return np.ascontiguousarray(clks[:, :half] ^ clks[:, half:])


def balance(
    clks: npt.NDArray[np.uint64], permutation: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """Primitive hardening: append the complement, then permute the 2L bits with a keyed
    permutation. Every output has exactly L bits set, hiding how many tokens a record had.

    Computed as a width-1 diffusion (output bit j is input bit ``permutation[j] mod L``) with
    the bits that came from the complement inverted: the bit-sliced kernel, not an unpacked
    gather (:func:`balance_reference` is that, kept as the twin)."""
    length = clks.shape[1] * 64
    sources = (permutation % length).astype(np.int64)[:, None]
    inverted = np.packbits(permutation >= length, bitorder="little").view("<u8")
    return np.ascontiguousarray(diffuse(clks, sources) ^ inverted, dtype=np.uint64)


def balance_reference(
    clks: npt.NDArray[np.uint64], permutation: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """The slow, obvious twin of :func:`balance`: unpack, gather, pack."""
    doubled = np.concatenate([clks, ~clks], axis=1)
    bits = np.unpackbits(doubled.view(np.uint8), axis=1, bitorder="little")
    packed = np.packbits(bits[:, permutation], axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8")


def rule90(clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Primitive hardening: bit i = bit (i - 1) XOR bit (i + 1), indices modulo L. Keyless."""
    words = np.ascontiguousarray(clks, dtype=np.uint64)
    one, top = np.uint64(1), np.uint64(63)
    # Bit i - 1 at i: shift each word up one and carry in the previous word's top bit
    # (cyclically); bit i + 1 at i: shift down and carry in the next word's bottom bit.
    left = (words << one) | (np.roll(words, 1, axis=1) >> top)
    right = (words >> one) | (np.roll(words, -1, axis=1) << top)
    return np.ascontiguousarray(left ^ right)


def rule90_reference(clks: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The slow, obvious twin of :func:`rule90`: one bit at a time."""
    bits = np.unpackbits(clks.astype("<u8").view(np.uint8), axis=1, bitorder="little")
    length = bits.shape[1]
    out = np.zeros_like(bits)
    for row in range(bits.shape[0]):
        for index in range(length):
            out[row, index] = bits[row, (index - 1) % length] ^ bits[row, (index + 1) % length]
    return np.packbits(out, axis=1, bitorder="little").view("<u8")


def diffuse(
    clks: npt.NDArray[np.uint64],
    taps: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint64] | None = None,
) -> npt.NDArray[np.uint64]:
    """Primitive hardening: output bit j of a row = XOR of its input bits ``taps[j, :]``.

    Linear over GF(2), so an all-zero row stays all zero; a pair at normalised Hamming
    distance d stays at about ``(1 - (1 - 2d) ** width) / 2``. ``out``: where to write the
    result (a ``(rows, output_bits // 64)`` uint64 array or column slice of one); returned.
    """
    if taps.shape[0] % 64:
        raise ConfigurationError("diffusion output bits must be a multiple of 64")
    return _diffuse(clks, taps, taps.shape[1], out)


def nonlinear_diffuse(
    clks: npt.NDArray[np.uint64],
    taps: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint64] | None = None,
) -> npt.NDArray[np.uint64]:
    """Primitive hardening: output bit j = XOR of input bits ``taps[j, :-2]``, XOR the AND of
    input bits ``taps[j, -2]`` and ``taps[j, -1]``. All zero stays all zero. ``out`` as for
    :func:`diffuse`.

    One pass of the bit-sliced kernel, the XOR and the AND on the same bit planes
    (:func:`nonlinear_diffuse_reference` is the bit-by-bit twin)."""
    if taps.shape[1] < 3:
        raise ConfigurationError(
            "nonlinear diffusion needs at least one linear tap and two AND taps"
        )
    if taps.shape[0] % 64:
        raise ConfigurationError("diffusion output bits must be a multiple of 64")
    return _diffuse(clks, taps, taps.shape[1] - 2, out)


def _diffuse(
    clks: npt.NDArray[np.uint64],
    taps: npt.NDArray[np.int64],
    linear: int,
    out: npt.NDArray[np.uint64] | None,
) -> npt.NDArray[np.uint64]:
    from protocol.diffusion_kernel import diffuse_planes  # numba: imported only when used

    if clks.dtype != np.uint64 or clks.strides[1] != 8:
        clks = np.ascontiguousarray(clks, dtype=np.uint64)
    shape = (clks.shape[0], taps.shape[0] // 64)
    if out is None:
        out = np.empty(shape, dtype=np.uint64)
    elif out.shape != shape or out.dtype != np.uint64:
        raise ConfigurationError(f"diffusion writes a {shape} uint64 array")
    diffuse_planes(clks, np.ascontiguousarray(taps), linear, out)
    return out


def _bit_by_bit(
    clks: npt.NDArray[np.uint64],
    taps: npt.NDArray[np.int64],
    output_bit: Callable[[npt.NDArray[np.uint8], list[int]], int],
) -> npt.NDArray[np.uint64]:
    """The slow twins' loop: every output bit of every row from its row of taps."""
    bits = np.unpackbits(clks.astype("<u8").view(np.uint8), axis=1, bitorder="little")
    out = np.zeros((bits.shape[0], taps.shape[0]), dtype=np.uint8)
    for row in range(bits.shape[0]):
        for output, positions in enumerate(taps.tolist()):
            out[row, output] = output_bit(bits[row], positions)
    return np.packbits(out, axis=1, bitorder="little").view("<u8")


def _parity(bits: npt.NDArray[np.uint8], positions: Sequence[int]) -> int:
    value = 0
    for position in positions:
        value ^= int(bits[position])
    return value


def nonlinear_diffuse_reference(
    clks: npt.NDArray[np.uint64], taps: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """The slow, obvious twin of :func:`nonlinear_diffuse`: one output bit at a time."""
    return _bit_by_bit(
        clks,
        taps,
        lambda bits, row: _parity(bits, row[:-2]) ^ (int(bits[row[-2]]) & int(bits[row[-1]])),
    )


def diffuse_reference(
    clks: npt.NDArray[np.uint64], taps: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """The slow, obvious twin of :func:`diffuse`: one output bit at a time."""
    return _bit_by_bit(clks, taps, _parity)


def fresh_random_bytes() -> RandomBytes:
    """An unpredictable byte stream: ChaCha20 keystream under a key from ``os.urandom``.

    As unpredictable as the OS generator (the key is 256 bits from it) at about 1 GB/s,
    where BLIP needs two bytes per bit of every record.
    """
    encryptor = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), mode=None).encryptor()

    def random_bytes(count: int) -> bytes:
        return encryptor.update(bytes(count))

    return random_bytes


def blip(
    clks: npt.NDArray[np.uint64], flip_per_65536: int, random_bytes: RandomBytes
) -> npt.NDArray[np.uint64]:
    """Primitive hardening: flip each bit with probability ``flip_per_65536 / 65536``.

    Bit i of row r flips when the little-endian u16 at bytes ``2 * (r * L + i)`` of
    ``random_bytes(2 * rows * L)`` is below ``flip_per_65536``. Rows that are all zero are
    left all zero (a missing group stays recognisable); they still use their bytes.
    """
    rows, words = clks.shape
    length = words * 64
    draws = np.frombuffer(random_bytes(2 * rows * length), dtype="<u2").reshape(rows, length)
    flips = np.packbits(draws < flip_per_65536, axis=1, bitorder="little").view("<u8")
    flips[~np.any(clks != 0, axis=1)] = 0
    return np.ascontiguousarray(clks ^ flips, dtype=np.uint64)


def blip_reference(
    clks: npt.NDArray[np.uint64], flip_per_65536: int, random_bytes: RandomBytes
) -> npt.NDArray[np.uint64]:
    """The slow, obvious twin of :func:`blip`: one bit at a time."""
    rows, words = clks.shape
    length = words * 64
    stream = random_bytes(2 * rows * length)
    bits = np.unpackbits(clks.astype("<u8").view(np.uint8), axis=1, bitorder="little")
    for row in range(rows):
        if not bits[row].any():
            continue
        for index in range(length):
            at = 2 * (row * length + index)
            if int.from_bytes(stream[at : at + 2], "little") < flip_per_65536:
                bits[row, index] ^= 1
    return np.packbits(bits, axis=1, bitorder="little").view("<u8")


_NO_TABLE: npt.NDArray[np.int64] = np.empty(0, np.int64)


class ChainHardener:
    """Applies one group's chain to blocks of its unhardened bits, keeping empty rows empty.

    ``keys[i]`` is step i's hardening key (None for a keyless step); the permutation or taps a
    keyed step needs are drawn once, here.
    """

    __slots__ = ("_random_bytes", "_steps", "_tables", "input_bits", "output_bits")

    def __init__(
        self,
        steps: Sequence[HardeningStep],
        *,
        input_bits: int,
        keys: Sequence[bytes | None],
        random_bytes: RandomBytes,
    ) -> None:
        problems = check_chain(steps, input_bits)
        if problems:
            raise ConfigurationError(f"hardening {problems[0][0]}: {problems[0][1]}")
        self._steps = tuple(steps)
        self._random_bytes = random_bytes
        # A keyed step's table; an unkeyed step's is empty (it has none).
        self._tables: list[npt.NDArray[np.int64]] = []
        bits = input_bits
        for step, key in zip(self._steps, keys, strict=True):
            if not step.keyed:
                self._tables.append(_NO_TABLE)
            elif key is None:
                raise ConfigurationError(f"hardening step {step.method} needs a key")
            elif step.method is HardeningMethod.BALANCE:
                self._tables.append(keyed_permutation(key, 2 * bits))
            else:  # a diffusion layer; the nonlinear one draws its AND term's two taps last
                extra = 2 if step.method is HardeningMethod.NONLINEAR_DIFFUSION else 0
                self._tables.append(
                    diffusion_taps(
                        key, input_bits=bits, output_bits=step.output_bits, width=step.width + extra
                    )
                )
            bits = step.output_length(bits)
        self.input_bits = input_bits
        self.output_bits = bits

    def apply(
        self, clks: npt.NDArray[np.uint64], out: npt.NDArray[np.uint64] | None = None
    ) -> npt.NDArray[np.uint64]:
        """``(rows, input_bits // 64)`` unhardened -> ``(rows, output_bits // 64)`` hardened.
        ``clks`` may be a column slice of a wider array; ``out``, where to write the result
        (an array or column slice of one), is returned. A chain whose last step is a
        diffusion writes there directly; any other copies its result in."""
        if not self._steps:
            if out is None:
                return clks
            out[...] = clks
            return out
        # A missing group stays all zero: every step but balance keeps a zero row zero, so
        # only a chain with balance looks for empty rows.
        empty = (
            ~np.any(clks != 0, axis=1)
            if any(step.method is HardeningMethod.BALANCE for step in self._steps)
            else None
        )
        last = len(self._steps) - 1
        for index, (step, table) in enumerate(zip(self._steps, self._tables, strict=True)):
            target = out if index == last and empty is None else None
            if step.method is HardeningMethod.XOR_FOLD:
                clks = xor_fold(np.ascontiguousarray(clks))
            elif step.method is HardeningMethod.BALANCE:
                clks = balance(np.ascontiguousarray(clks), table)
            elif step.method is HardeningMethod.RULE90:
                clks = rule90(np.ascontiguousarray(clks))
            elif step.method is HardeningMethod.DIFFUSION:
                clks = diffuse(clks, table, target)
            elif step.method is HardeningMethod.NONLINEAR_DIFFUSION:
                clks = nonlinear_diffuse(clks, table, target)
            else:
                clks = blip(np.ascontiguousarray(clks), step.flip_per_65536, self._random_bytes)
            if empty is not None:
                clks[empty] = 0
        if out is not None and clks is not out:
            out[...] = clks
            return out
        return clks
        empty = ~np.any(clks != 0, axis=1)
        for step, table in zip(self._steps, self._tables, strict=True):
            if step.method is HardeningMethod.XOR_FOLD:
                clks = xor_fold(clks)
            elif step.method is HardeningMethod.BALANCE:
                clks = balance(clks, table)
            elif step.method is HardeningMethod.RULE90:
                clks = rule90(clks)
            elif step.method is HardeningMethod.DIFFUSION:
                clks = diffuse(clks, table)
            elif step.method is HardeningMethod.NONLINEAR_DIFFUSION:
                clks = nonlinear_diffuse(clks, table)
            else:
                clks = blip(clks, step.flip_per_65536, self._random_bytes)
            clks[empty] = 0  # a missing group stays all zero whatever the step
        return clks
