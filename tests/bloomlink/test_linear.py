"""Undoing linear diffusion (bloomlink/attacks/linear.py): the GF(2) fast paths agree with
their slow twins, a small keyed diffusion is undone, and bits with no linear structure are
not claimed as undone."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bloomlink.attacks.assessment import _undone_views
from bloomlink.attacks.linear import (
    LinearSettings,
    _pack,
    _unpack,
    columns_found,
    inputs_agreement,
    recover_inputs,
    row_basis,
    row_basis_reference,
    solve,
    solve_reference,
    sparser_coordinates,
)
from bloomlink.attacks.views import EncodedRecords, bit_views
from protocol.clk_layout import ClkLayout, GroupLayout
from protocol.hardening import diffuse, diffusion_taps


def _as_int(row: npt.NDArray[np.uint8]) -> int:
    return sum(int(bit) << index for index, bit in enumerate(row.tolist()))


bit_rows = st.integers(1, 12).flatmap(
    lambda rows: st.integers(1, 130).flatmap(
        lambda bits: st.lists(
            st.lists(st.integers(0, 1), min_size=bits, max_size=bits), min_size=rows, max_size=rows
        )
    )
)


@given(bit_rows)
def test_row_basis_spans_what_the_reference_spans(rows: list[list[int]]) -> None:
    bits = np.array(rows, dtype=np.uint8)
    fast = _unpack(row_basis(_pack(bits), bits.shape[1]), bits.shape[1])
    reference = row_basis_reference([_as_int(row) for row in bits])
    assert len(fast) == len(reference)
    # the same span: each side's rows reduce to nothing against the other's
    both = row_basis_reference([_as_int(row) for row in fast] + reference)
    assert len(both) == len(reference)


@given(bit_rows, st.integers(0, 2**32 - 1))
def test_solve_agrees_with_the_reference(rows: list[list[int]], seed: int) -> None:
    bits = np.array(rows, dtype=np.uint8)
    width = bits.shape[1]
    basis = _unpack(row_basis(_pack(bits), width), width)
    generator = np.random.default_rng(seed)
    mixes = generator.integers(0, 2, size=(5, len(basis)), dtype=np.uint8)
    inside = (mixes.astype(np.int64) @ basis.astype(np.int64) & 1).astype(np.uint8)
    outside = generator.integers(0, 2, size=(5, width), dtype=np.uint8)
    encodings = np.concatenate([inside, outside])
    coordinates, exact = solve(basis, encodings)
    reference_basis = [_as_int(row) for row in basis]
    for row, encoding in enumerate(encodings):
        expected = solve_reference(reference_basis, _as_int(encoding))
        assert bool(exact[row]) == (expected is not None)
        if expected is not None:
            assert coordinates[row].tolist() == expected
    assert exact[: len(inside)].all()
    assert (coordinates[: len(inside)] == mixes).all()


def _bloom_like(records: int, bits: int, seed: int) -> npt.NDArray[np.uint8]:
    """Sparse 0/1 rows with uneven bit frequencies, as Bloom filters have."""
    generator = np.random.default_rng(seed)
    frequencies = generator.uniform(0.05, 0.4, size=bits)
    return (generator.random((records, bits)) < frequencies).astype(np.uint8)


def test_a_small_keyed_diffusion_is_undone() -> None:
    inputs = _bloom_like(600, 128, seed=1)
    taps = diffusion_taps(b"k" * 32, input_bits=128, output_bits=256, width=3)
    encodings = diffuse(_pack(inputs), taps)
    columns = _unpack(diffuse(_pack(np.eye(128, dtype=np.uint8)), taps), 256)
    recovery = recover_inputs(encodings, group="small", settings=LinearSettings(seed=3))
    assert recovery.recovered and recovery.inputs is not None
    assert recovery.rank == 128 and recovery.in_span == 600
    assert columns_found(recovery.basis, columns) >= 125, recovery.line()
    agreement = inputs_agreement(recovery.inputs, inputs, basis=recovery.basis, columns=columns)
    assert agreement >= 0.9, recovery.line()
    # the greedy minimum-weight basis alone mixes columns: most records come out wrong
    greedy = recover_inputs(
        encodings, group="small", settings=LinearSettings(seed=3, refine_moves=0)
    )
    assert greedy.inputs is not None
    mixed = inputs_agreement(greedy.inputs, inputs, basis=greedy.basis, columns=columns)
    assert mixed < 0.5, greedy.line()


def test_sparser_coordinates_keep_every_encoding() -> None:
    inputs = _bloom_like(300, 64, seed=9)
    taps = diffusion_taps(b"j" * 32, input_bits=64, output_bits=128, width=3)
    encodings = _unpack(diffuse(_pack(inputs), taps), 128)
    recovery = recover_inputs(
        _pack(encodings), group="small", settings=LinearSettings(seed=1, refine_moves=0)
    )
    assert recovery.inputs is not None
    basis, coordinates = sparser_coordinates(recovery.basis, recovery.inputs, moves=50)
    rebuilt = (coordinates.astype(np.int64) @ basis.astype(np.int64)) & 1
    assert (rebuilt == encodings).all()
    assert coordinates.sum() <= recovery.inputs.sum()
    assert (solve(basis, encodings)[0] == coordinates).all()


def test_bits_with_no_linear_structure_are_not_undone() -> None:
    generator = np.random.default_rng(2)
    random = generator.integers(0, 2, size=(300, 256), dtype=np.uint8)
    recovery = recover_inputs(_pack(random), group="random", settings=LinearSettings(seed=3))
    assert recovery.rank == 256 and not recovery.recovered
    # records that span a proper subspace (60 random rows and 40 XORs of them), but one with
    # no low-weight vectors: the search finds no candidate
    mixes = generator.integers(0, 2, size=(40, 60)).astype(np.int64)
    combined = (mixes @ random[:60].astype(np.int64) & 1).astype(np.uint8)
    few = recover_inputs(
        _pack(np.concatenate([random[:60], combined])),
        group="random",
        settings=LinearSettings(iterations=100, seed=3),
    )
    assert few.rank == 60 and few.iterations == 100, few.line()
    assert not few.recovered and len(few.basis) == 0, few.line()


def test_unhardened_bits_are_not_undone() -> None:
    """Nothing to undo: a plain Bloom filter with unused positions spans single bits only."""
    inputs = _bloom_like(400, 128, seed=4)
    inputs[:, :20] = 0
    recovery = recover_inputs(_pack(inputs), group="plain", settings=LinearSettings(seed=3))
    assert recovery.rank == 108 and not recovery.recovered
    assert set(recovery.weights) == {1}


def test_agreement_is_exact_up_to_a_permutation_of_positions() -> None:
    truth = _bloom_like(50, 40, seed=5)
    columns = np.random.default_rng(6).integers(0, 2, size=(40, 80), dtype=np.uint8)
    columns[39] = 0  # an input that reaches no output
    order = np.random.default_rng(7).permutation(39)
    basis, inputs = columns[order], truth[:, order]
    assert inputs_agreement(inputs, truth, basis=basis, columns=columns) == 1.0
    mixed = basis.copy()
    mixed[0] ^= mixed[1]  # a sum of two columns in place of one: its coordinate is not a bit
    rows = inputs[:, 0].astype(bool) | truth[:, order[0]].astype(bool)
    assert inputs_agreement(inputs, truth, basis=mixed, columns=columns) == pytest.approx(
        np.mean(~rows)
    )


def test_assess_adds_a_view_for_each_group_whose_diffusion_is_undone() -> None:
    """A diffused group gets an undone view (its recovered inputs), a group of random bits
    gets none, and the whole record is offered with every undone group in place."""
    inputs = _bloom_like(600, 128, seed=1)
    taps = diffusion_taps(b"k" * 32, input_bits=128, output_bits=256, width=3)
    diffused = diffuse(_pack(inputs), taps)
    noise = np.random.default_rng(8).integers(0, 2**63, size=(600, 4), dtype=np.uint64)
    layout = ClkLayout(groups=(GroupLayout(name="a", bits=256), GroupLayout(name="b", bits=256)))
    records = EncodedRecords(clks=np.concatenate([diffused, noise], axis=1), layout=layout)
    views = bit_views(records)
    recoveries, undone = _undone_views(records, views, LinearSettings(seed=3))
    assert [recovery.recovered for recovery in recoveries] == [True, False]
    assert [view.name for view in undone] == [
        "a (diffusion undone)",
        "whole record (diffusion undone)",
    ]
    assert undone[0].groups == (0,) and undone[0].bits.shape == (600, 128)
    assert undone[1].bits.shape == (600, 128 + 256)
    assert (undone[1].bits[:, 128:] == views[1].bits).all()
