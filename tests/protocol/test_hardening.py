"""Hardening steps: each fast transform agrees with its slow twin and with the stdlib-only
reference encoder, keeps a missing group all zero, and the descriptors have one spelling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ConfigurationError
from protocol.hardening import (
    HARDENING_DESCRIPTOR_PATTERN,
    ChainHardener,
    HardeningMethod,
    HardeningStep,
    balance,
    balance_reference,
    blip,
    blip_reference,
    check_chain,
    describe_chain,
    diffuse,
    diffuse_reference,
    diffusion_taps,
    fresh_random_bytes,
    keyed_permutation,
    nonlinear_diffuse,
    nonlinear_diffuse_reference,
    parse_descriptor,
    rule90,
    rule90_reference,
)
from tests import strategies
from tests.reference import reference_encoder as reference
from tests.reference.make_vectors import random_stream


def as_bits(row: np.ndarray) -> list[int]:
    return np.unpackbits(row.astype("<u8").view(np.uint8), bitorder="little").tolist()


@given(
    strategies.clk_blocks(max_rows=70, max_words=4),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=2, max_value=6),
    st.binary(min_size=32, max_size=32),
)
def test_diffusion_agrees_with_its_twin_and_the_reference(
    clks: np.ndarray, output_words: int, width: int, key: bytes
) -> None:
    input_bits = clks.shape[1] * 64
    taps = diffusion_taps(key, input_bits=input_bits, output_bits=64 * output_words, width=width)
    assert taps.tolist() == reference.taps(key, input_bits, 64 * output_words, width)
    assert all(len(set(row)) == width for row in taps.tolist())
    assert taps.min() >= 0 and taps.max() < input_bits
    fast = diffuse(clks, taps)
    assert fast.shape == (len(clks), output_words)
    assert np.array_equal(fast, diffuse_reference(clks, taps))


@given(strategies.clk_blocks(max_rows=20, max_words=3), strategies.clk_blocks(max_rows=20))
def test_diffusion_is_linear_and_keeps_zero(left: np.ndarray, right: np.ndarray) -> None:
    rows = min(len(left), len(right))
    right = np.resize(right, (rows, left.shape[1])).astype(np.uint64)
    left = left[:rows]
    taps = diffusion_taps(b"k" * 32, input_bits=left.shape[1] * 64, output_bits=128, width=3)
    assert np.array_equal(diffuse(left ^ right, taps), diffuse(left, taps) ^ diffuse(right, taps))
    assert not diffuse(np.zeros_like(left), taps).any()


@given(
    # Past 256 rows: the kernel works on four blocks of 64 records at once, the last partial.
    strategies.clk_blocks(max_rows=300, max_words=3),
    st.integers(min_value=1, max_value=2),
    st.integers(min_value=1, max_value=4),
    st.binary(min_size=32, max_size=32),
)
def test_nonlinear_diffusion_agrees_with_its_twin_and_the_reference(
    clks: np.ndarray, output_words: int, width: int, key: bytes
) -> None:
    input_bits = clks.shape[1] * 64
    taps = diffusion_taps(
        key, input_bits=input_bits, output_bits=64 * output_words, width=width + 2
    )
    fast = nonlinear_diffuse(clks, taps)
    assert np.array_equal(fast, nonlinear_diffuse_reference(clks, taps))
    for row, out in zip(clks, fast, strict=True):
        assert as_bits(out) == reference.nonlinear_diffusion(as_bits(row), taps.tolist())
    assert not nonlinear_diffuse(np.zeros_like(clks), taps).any()


def test_nonlinear_diffusion_leaves_no_linear_structure() -> None:
    """Linear diffusion's encodings lie in a space of the input's dimension (the attack in
    bloomlink/attacks/linear.py finds its sparse basis); the AND terms fill the whole space."""
    rng = np.random.default_rng(8)
    inputs = np.packbits(rng.random((3000, 256)) < 0.3, axis=1, bitorder="little").view("<u8")
    linear = diffuse(inputs, diffusion_taps(b"l" * 32, input_bits=256, output_bits=512, width=3))
    taps = diffusion_taps(b"n" * 32, input_bits=256, output_bits=512, width=4)
    mixed = nonlinear_diffuse(inputs, taps)
    assert _gf2_rank(linear) <= 256
    assert _gf2_rank(mixed) == 512


def _gf2_rank(clks: np.ndarray) -> int:
    rows = [int.from_bytes(row.astype("<u8").tobytes(), "little") for row in clks]
    basis: dict[int, int] = {}
    for value in rows:
        while value:
            top = value.bit_length() - 1
            if top not in basis:
                basis[top] = value
                break
            value ^= basis[top]
    return len(basis)


def test_diffusion_similarity_falls_as_the_width_power() -> None:
    # Pairs at normalised Hamming distance d land near (1 - (1 - 2d) ** width) / 2.
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, size=(4000, 16), dtype=np.uint64)
    flips = np.packbits(rng.random((4000, 1024)) < 0.05, axis=1, bitorder="little").view("<u8")
    taps = diffusion_taps(b"w" * 32, input_bits=1024, output_bits=1024, width=4)
    distance = np.bitwise_count(diffuse(base, taps) ^ diffuse(base ^ flips, taps)).sum() / (
        4000 * 1024
    )
    assert abs(distance - (1 - 0.9**4) / 2) < 0.005


@given(strategies.clk_blocks(max_rows=10, max_words=3))
def test_rule90_agrees_with_its_twin_and_keeps_zero(clks: np.ndarray) -> None:
    assert np.array_equal(rule90(clks), rule90_reference(clks))
    assert not rule90(np.zeros_like(clks)).any()


@given(
    strategies.clk_blocks(max_rows=12, max_words=2, empty_rows=True),
    st.integers(min_value=1, max_value=32767),
    st.binary(min_size=4, max_size=4),
)
def test_blip_agrees_with_its_twin_and_keeps_empty_rows_empty(
    clks: np.ndarray, flips: int, seed: bytes
) -> None:
    fast = blip(clks, flips, random_stream(seed))
    assert np.array_equal(fast, blip_reference(clks, flips, random_stream(seed)))
    empty = ~clks.any(axis=1)
    assert not fast[empty].any()


def test_blip_flips_at_its_rate_with_fresh_randomness() -> None:
    clks = np.full((2000, 16), np.uint64(0x5555_5555_5555_5555))
    flipped = blip(clks, 6554, fresh_random_bytes())  # 0.1
    rate = np.bitwise_count(flipped ^ clks).sum() / clks.size / 64
    assert abs(rate - 0.1) < 0.005
    again = blip(clks, 6554, fresh_random_bytes())
    assert not np.array_equal(flipped, again)  # fresh randomness every encode


@pytest.mark.parametrize(
    "descriptor",
    [
        "xor-fold",
        "balance",
        "rule90",
        "diffusion:width=4,output_bits=1024",
        "blip:flip_per_65536=2048",
        "diffusion:width=3,output_bits=512+blip:flip_per_65536=655",
    ],
)
def test_every_method_keeps_a_missing_group_all_zero(descriptor: str) -> None:
    steps = parse_descriptor(descriptor)
    keys = [b"h" * 32 if step.keyed else None for step in steps]
    hardener = ChainHardener(steps, input_bits=1024, keys=keys, random_bytes=random_stream(b"z"))
    clks = np.random.default_rng(3).integers(0, 2**63, size=(6, 16), dtype=np.uint64)
    clks[[1, 4]] = 0
    out = hardener.apply(clks)
    assert out.shape == (6, hardener.output_bits // 64)
    assert not out[[1, 4]].any() and out[[0, 2, 3, 5]].any(axis=1).all()


@given(
    st.lists(
        st.one_of(
            st.sampled_from(["xor-fold", "balance", "rule90"]),
            st.builds(
                "diffusion:width={},output_bits={}".format,
                st.integers(2, 16),
                st.integers(1, 1024).map(lambda words: 64 * words),
            ),
            st.builds("blip:flip_per_65536={}".format, st.integers(1, 32767)),
        ),
        min_size=1,
        max_size=3,
    ).map("+".join)
)
def test_descriptors_round_trip_in_one_spelling(descriptor: str) -> None:
    assert HARDENING_DESCRIPTOR_PATTERN.fullmatch(descriptor)
    assert describe_chain(parse_descriptor(descriptor)) == descriptor


@pytest.mark.parametrize(
    "text",
    [
        "",
        "None",
        "diffusion:width=04,output_bits=1024",
        "diffusion:output_bits=1024,width=4",
        "blip:flip_per_65536=0",
        "balance+balance+balance+balance",
        "balance+",
        "rule90 ",
        "xor-fold+none",
    ],
)
def test_non_canonical_descriptors_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_descriptor(text)


@pytest.mark.parametrize(
    ("step", "input_bits", "parameter"),
    [
        (HardeningStep(method=HardeningMethod.DIFFUSION, width=1, output_bits=1024), 1024, "width"),
        (
            HardeningStep(method=HardeningMethod.DIFFUSION, width=17, output_bits=1024),
            1024,
            "width",
        ),
        (
            HardeningStep(method=HardeningMethod.DIFFUSION, width=4, output_bits=256),
            1024,
            "output_bits",
        ),
        (
            HardeningStep(method=HardeningMethod.DIFFUSION, width=4, output_bits=100),
            1024,
            "output_bits",
        ),
        (HardeningStep(method=HardeningMethod.BLIP, flip_per_65536=0), 1024, "flip_probability"),
        (
            HardeningStep(method=HardeningMethod.BLIP, flip_per_65536=32768),
            1024,
            "flip_probability",
        ),
        (HardeningStep(method=HardeningMethod.BLIP, flip_per_65536=63), 1024, "flip_probability"),
        (HardeningStep(method=HardeningMethod.XOR_FOLD), 64, "method"),
        (HardeningStep(method=HardeningMethod.BALANCE), 65536, "method"),
    ],
)
def test_steps_that_protect_nothing_are_refused_by_parameter(
    step: HardeningStep, input_bits: int, parameter: str
) -> None:
    assert [name for name, _ in check_chain([step], input_bits)] == [parameter]


def test_blip_that_flips_a_bit_on_average_is_accepted() -> None:
    assert check_chain([HardeningStep(method=HardeningMethod.BLIP, flip_per_65536=64)], 1024) == []


@given(strategies.clk_blocks(max_rows=70, max_words=3), st.binary(min_size=32, max_size=32))
def test_balance_agrees_with_its_twin(clks: np.ndarray, key: bytes) -> None:
    permutation = keyed_permutation(key, 2 * 64 * clks.shape[1])
    fast = balance(clks, permutation)
    assert np.array_equal(fast, balance_reference(clks, permutation))
    assert (np.bitwise_count(fast).sum(axis=1) == 64 * clks.shape[1]).all()


def test_a_chain_whose_descriptor_does_not_fit_the_header_is_refused() -> None:
    step = HardeningStep(method=HardeningMethod.NONLINEAR_DIFFUSION, width=14, output_bits=65536)
    fits = check_chain([step, step], 65536)
    assert not any("descriptor" in message for _, message in fits)
    problems = check_chain([step, step, step], 65536)
    assert any("descriptor of 140 bytes" in message for _, message in problems)
