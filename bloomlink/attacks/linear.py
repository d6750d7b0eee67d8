"""Undoing linear diffusion: a field group's plain Bloom filters recovered from its encodings.

Stage: privacy evaluation (a view transform run before the attribute attacks). The threat is
a curious linkage unit with no key. Keyed diffusion (protocol/hardening.py ``diffuse``) makes
each output bit the XOR of ``width`` keyed input bits, so a group's encoding is ``y = A x``
over GF(2): ``x`` the record's plain keyed Bloom filter, ``A`` an (output bits, input bits)
matrix whose columns have about ``output_bits * width / input_bits`` ones (8 for the default
name group). Every encoding lies in the column space of ``A``, and that space's lowest-weight
vectors are, almost always, exactly ``A``'s columns. So:

1. the encodings' row span is found by Gaussian elimination over GF(2) (:func:`row_basis`);
   its rank is about the number of input bits any record uses;
2. low-weight vectors of that span are found by information-set decoding (Prange with
   Lee-Brickell ``p = 2``): pivot the basis to systematic form on a random set of columns;
   every row, and every XOR of two rows, of weight at most ``max_weight`` is a candidate. A
   column of weight ``w`` shows up with probability about ``(1 + w + w(w-1)/2) / 2**w`` per
   iteration. The greedy minimum-weight basis of the candidates (lightest first, each kept
   when independent of those kept) is the estimate of ``A``'s used columns;
3. each encoding is solved for its coordinates ``z`` in that basis (:func:`solve`), and the
   basis is corrected where it mixes two columns (:func:`sparser_coordinates`). When the
   basis vectors are ``A``'s columns, ``z`` is the record's pre-diffusion Bloom filter with
   its positions permuted: what a plain keyed CLK gives the other attacks.

Recovery is claimed only when it means something (:attr:`LinearRecovery.recovered`): the
encodings span a proper subspace (fewer dimensions than records and than output bits), the
low-weight basis spans all of it, and not every basis vector is a single bit (nothing to
undo). Random bits, or any encoding with no linear structure, span everything or have no
low-weight vectors, and give no recovery.

The fast paths work on rows packed into uint64 words (bit ``c`` of a row is bit ``c % 64``
of word ``c // 64``, as in an encoded file); :func:`row_basis_reference` and
:func:`solve_reference` are their slow, obvious twins on Python integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "LinearRecovery",
    "LinearSettings",
    "columns_found",
    "inputs_agreement",
    "recover_inputs",
    "row_basis",
    "row_basis_reference",
    "solve",
    "solve_reference",
    "sparser_coordinates",
]

Packed = npt.NDArray[np.uint64]
Bits = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearSettings:
    """How hard the low-weight search works.

    ``iterations`` caps the information-set iterations; every ``check_every`` of them the
    greedy basis is rebuilt, and the search stops once it spans the encodings and its total
    weight has not fallen since the last check. ``max_weight`` bounds a candidate's weight
    (well below a random code's minimum distance, well above a diffusion column's).
    ``max_rank_share``: a span of more than this share of the output bits is not searched.
    ``refine_moves``: at most this many moves of :func:`sparser_coordinates` (0: keep the
    greedy basis).
    """

    iterations: int = 1000
    check_every: int = 50
    max_weight: int = 32
    max_rank_share: float = 0.95
    refine_moves: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.check_every < 1:
            raise ValueError("iterations and check_every must be positive")
        if self.max_weight < 1:
            raise ValueError("max_weight must be positive")
        if not 0.0 < self.max_rank_share <= 1.0:
            raise ValueError("max_rank_share must be in (0, 1]")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LinearRecovery:
    """What the search found for one group.

    ``rank``: the dimension of the encodings' row span. ``basis``: the low-weight vectors
    kept, ``(kept, output_bits)`` 0/1 (``kept == rank`` when the search finished).
    ``inputs``: each record's coordinates in that basis, ``(records, rank)`` 0/1, only when
    :attr:`recovered`; ``in_span``: how many records the basis reproduces exactly.
    """

    group: str
    records: int
    output_bits: int
    rank: int
    basis: Bits
    iterations: int
    inputs: Bits | None
    in_span: int

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(int(weight) for weight in self.basis.sum(axis=1).tolist())

    @property
    def recovered(self) -> bool:
        return self.inputs is not None

    def line(self) -> str:
        weights = self.weights
        spread = (
            f"weights {min(weights)}..{max(weights)}, mean {np.mean(weights):.1f}"
            if weights
            else "no candidates"
        )
        state = "recovered" if self.recovered else "not recovered"
        return (
            f"[{self.group}] linear diffusion {state}: rank {self.rank} of {self.output_bits} "
            f"output bits ({self.records} records), {len(weights)} low-weight basis vectors "
            f"({spread}) after {self.iterations} iterations; {self.in_span} records in their span"
        )


# -- GF(2) elimination on packed rows ---------------------------------------------------------


def _eliminate(
    packed: Packed, columns: Sequence[int] | npt.NDArray[np.int64], *, stop: int | None = None
) -> tuple[Packed, list[int]]:
    """Reduced row echelon form of ``packed``, pivoting on ``columns`` in the order given.

    Returns the nonzero rows (each with a one at its pivot and zeros at every other pivot)
    and the pivot columns, row by row. ``stop``: pivot at most this many rows.
    """
    matrix = np.array(packed, dtype=np.uint64, copy=True)
    rows = matrix.shape[0]
    limit = rows if stop is None else min(rows, stop)
    pivots: list[int] = []
    done = 0
    for column in columns:
        if done == limit:
            break
        word = int(column) >> 6
        mask = np.uint64(1) << np.uint64(int(column) & 63)
        hits = np.flatnonzero(matrix[done:, word] & mask)
        if hits.size == 0:
            continue
        chosen = done + int(hits[0])
        if chosen != done:
            matrix[[done, chosen]] = matrix[[chosen, done]]
        others = np.flatnonzero(matrix[:, word] & mask)
        others = others[others != done]
        if others.size:
            matrix[others] ^= matrix[done]
        pivots.append(int(column))
        done += 1
    return matrix[:done], pivots


def row_basis(packed: Packed, bits: int) -> Packed:
    """A basis of the GF(2) row span of ``packed`` (rows of ``bits`` bits), in reduced row
    echelon form: ``(rank, words)``."""
    basis, _ = _eliminate(packed, range(bits))
    return basis


def _to_int(row: Packed) -> int:
    return int.from_bytes(np.ascontiguousarray(row, dtype="<u8").tobytes(), "little")


def _from_ints(values: Sequence[int], words: int) -> Packed:
    data = b"".join(value.to_bytes(8 * words, "little") for value in values)
    return np.frombuffer(data, dtype="<u8").reshape(len(values), words).astype(np.uint64)


def _reduce_against(value: int, basis: dict[int, int]) -> int:
    """``value`` reduced by an echelon basis keyed by each vector's highest set bit."""
    while value:
        top = value.bit_length() - 1
        vector = basis.get(top)
        if vector is None:
            return value
        value ^= vector
    return 0


def row_basis_reference(rows: Sequence[int]) -> list[int]:
    """The slow, obvious twin of :func:`row_basis` on Python integers (bit c = bit c of the
    row): each row is reduced by the basis so far and kept when something is left."""
    basis: dict[int, int] = {}
    for row in rows:
        left = _reduce_against(row, basis)
        if left:
            basis[left.bit_length() - 1] = left
    return [basis[top] for top in sorted(basis)]


def _unpack(packed: Packed, bits: int) -> Bits:
    raw = np.ascontiguousarray(packed, dtype="<u8").view(np.uint8)
    return np.unpackbits(raw, axis=1, bitorder="little", count=bits)


def _pack(bits: Bits) -> Packed:
    width = -(-bits.shape[1] // 64) * 64
    padded = np.zeros((bits.shape[0], width), dtype=np.uint8)
    padded[:, : bits.shape[1]] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64)


def solve(basis: Bits, encodings: Bits) -> tuple[Bits, npt.NDArray[np.bool_]]:
    """Each encoding's coordinates ``z`` in ``basis`` (``y = z @ basis`` over GF(2)).

    ``basis``: ``(rank, bits)`` 0/1 rows, linearly independent; ``encodings``: ``(records,
    bits)`` 0/1. Returns ``(records, rank)`` 0/1 coordinates and whether each encoding is
    reproduced exactly (``False``: not in the span; its ``z`` is then meaningless).
    """
    rank, bits = basis.shape
    if rank == 0:
        empty: npt.NDArray[np.bool_] = np.logical_not(np.any(encodings, axis=1))
        return np.zeros((len(encodings), 0), dtype=np.uint8), empty
    identity = np.eye(rank, dtype=np.uint8)
    augmented = _pack(np.concatenate([basis, identity], axis=1))
    reduced, pivots = _eliminate(augmented, range(bits))
    if len(pivots) != rank:
        raise ValueError("the basis rows are not linearly independent")
    transform = _unpack(reduced, bits + rank)[:, bits:].astype(np.float32)
    picked = encodings[:, pivots].astype(np.float32)
    coordinates = (np.rint(picked @ transform).astype(np.int64) & 1).astype(np.uint8)
    rebuilt = np.rint(coordinates.astype(np.float32) @ basis.astype(np.float32)).astype(np.int64)
    exact: npt.NDArray[np.bool_] = np.all((rebuilt & 1) == encodings, axis=1)
    return coordinates, exact


def solve_reference(basis: Sequence[int], encoding: int) -> list[int] | None:
    """The slow, obvious twin of :func:`solve` for one encoding (rows as Python integers):
    eliminate, remembering which basis rows each reduced row is made of; ``None`` when the
    encoding is not in the span."""
    reduced: dict[int, tuple[int, int]] = {}  # top bit -> (vector, which basis rows, as bits)
    for index, row in enumerate(basis):
        vector, made_of = row, 1 << index
        while vector:
            top = vector.bit_length() - 1
            if top not in reduced:
                break
            vector ^= reduced[top][0]
            made_of ^= reduced[top][1]
        if not vector:
            raise ValueError("the basis rows are not linearly independent")
        reduced[vector.bit_length() - 1] = (vector, made_of)
    value, made_of = encoding, 0
    while value:
        top = value.bit_length() - 1
        if top not in reduced:
            return None
        value ^= reduced[top][0]
        made_of ^= reduced[top][1]
    return [(made_of >> index) & 1 for index in range(len(basis))]


# -- low-weight search ------------------------------------------------------------------------


def _candidates(systematic: Packed, bits: int, max_weight: int, found: dict[bytes, int]) -> None:
    """Rows of ``systematic`` and XORs of two of its rows of weight <= ``max_weight``."""
    weights = np.bitwise_count(systematic).sum(axis=1).astype(np.int64)
    for row in np.flatnonzero(weights <= max_weight).tolist():
        found.setdefault(systematic[row].tobytes(), int(weights[row]))
    unpacked = _unpack(systematic, bits).astype(np.float32)
    shared = np.rint(unpacked @ unpacked.T).astype(np.int64)
    pair_weights = weights[:, None] + weights[None, :] - 2 * shared
    first, second = np.nonzero(np.triu(pair_weights <= max_weight, k=1))
    for left, right in zip(first.tolist(), second.tolist(), strict=True):
        vector = systematic[left] ^ systematic[right]
        found.setdefault(vector.tobytes(), int(pair_weights[left, right]))


def _greedy_basis(found: dict[bytes, int]) -> list[tuple[int, int]]:
    """Lightest first, each candidate kept when independent of those kept: (weight, row)."""
    echelon: dict[int, int] = {}
    kept: list[tuple[int, int]] = []
    for key, weight in sorted(found.items(), key=lambda item: (item[1], item[0])):
        value = int.from_bytes(key, "little")
        left = _reduce_against(value, echelon)
        if left:
            echelon[left.bit_length() - 1] = left
            kept.append((weight, value))
    return kept


def recover_inputs(
    clks: Packed, *, group: str = "", settings: LinearSettings = LinearSettings()
) -> LinearRecovery:
    """Undo a group's linear diffusion: the search of the module docstring on ``(records,
    words)`` uint64 encodings."""
    records, words = clks.shape
    bits = 64 * words
    span = row_basis(np.ascontiguousarray(clks, dtype=np.uint64), bits)
    rank = len(span)
    empty = np.zeros((0, bits), dtype=np.uint8)

    def result(basis: Bits, iterations: int, inputs: Bits | None, in_span: int) -> LinearRecovery:
        return LinearRecovery(
            group=group,
            records=records,
            output_bits=bits,
            rank=rank,
            basis=basis,
            iterations=iterations,
            inputs=inputs,
            in_span=in_span,
        )

    if rank == 0 or rank >= records or rank > settings.max_rank_share * bits:
        return result(empty, 0, None, 0)
    generator = np.random.default_rng(settings.seed)
    found: dict[bytes, int] = {}
    kept: list[tuple[int, int]] = []
    last_total: int | None = None
    iterations = 0
    while iterations < settings.iterations:
        systematic, _ = _eliminate(span, generator.permutation(bits))
        _candidates(systematic, bits, settings.max_weight, found)
        iterations += 1
        if iterations % settings.check_every == 0 or iterations == settings.iterations:
            kept = _greedy_basis(found)
            total = sum(weight for weight, _ in kept)
            if len(kept) == rank and total == last_total:
                break
            last_total = total
    basis = _unpack(_from_ints([value for _, value in kept], words), bits) if kept else empty
    encodings = _unpack(np.ascontiguousarray(clks, dtype=np.uint64), bits)
    if len(kept) != rank or all(weight == 1 for weight, _ in kept):
        return result(basis, iterations, None, 0)
    inputs, exact = solve(basis, encodings)
    basis, inputs = sparser_coordinates(basis, inputs, moves=settings.refine_moves)
    return result(basis, iterations, inputs, int(exact.sum()))


def sparser_coordinates(basis: Bits, inputs: Bits, *, moves: int) -> tuple[Bits, Bits]:
    """Changes of basis that undo the minimum-weight basis's mixing of two columns.

    The greedy basis can hold ``a_i + a_j`` in place of a column ``a_j``: where the two
    overlap in more than half of ``a_i`` (``a_i`` a single bit inside ``a_j``, say) the sum
    is lighter, and on a tie the order is arbitrary. A record's coordinate for ``a_i`` is
    then ``x_i XOR x_j``. Two signs tell such a basis from the true columns: read as an
    (outputs x basis vectors) matrix, the true columns give every output row the diffusion's
    width (the commonest row weight), a mixed vector makes some rows lighter or heavier;
    and Bloom-filter bits are set in fewer records than the XOR of two of them.

    A move replaces basis vector ``b_k`` by ``b_k + b_l`` and coordinate ``z_l`` by ``z_l XOR
    z_k`` (every ``z @ basis`` is unchanged). Each round makes the move that most lowers the
    number of records with the coordinate set among those that do not move the row weights
    further from the width (sum of squares); it stops when there is none, or after
    ``moves`` moves.
    """
    matrix = basis.astype(np.int64)
    coordinates = inputs.copy()
    if len(matrix) < 2:
        return basis, inputs
    for _ in range(moves):
        rows = matrix.sum(axis=0)
        width = int(np.bincount(rows[rows > 0]).argmax()) if rows.any() else 0
        excess = (rows - width).astype(np.float64)
        floats = matrix.astype(np.float64)
        # change of sum((rows - width) ** 2) when b_k becomes b_k + b_l: entry [k, l]
        spread = (
            floats.sum(axis=1)[None, :]
            + 2.0 * (floats @ excess)[None, :]
            - 4.0 * ((floats * excess[None, :]) @ floats.T)
        )
        counts = coordinates.sum(axis=0).astype(np.int64)
        ones = coordinates.astype(np.float32)
        shared = np.rint(ones.T @ ones).astype(np.int64)
        # change of the records with z_l set when z_l becomes z_l XOR z_k: entry [l, k]
        fewer = counts[None, :] - 2 * shared
        allowed = (spread.T <= 0.0) & (fewer < 0)
        np.fill_diagonal(allowed, False)
        if not allowed.any():
            break
        target, source = np.unravel_index(int(np.where(allowed, fewer, 0).argmin()), fewer.shape)
        coordinates[:, target] ^= coordinates[:, source]
        matrix[source] ^= matrix[target]
    return matrix.astype(np.uint8), coordinates


# -- scoring (needs the truth: benchmarks and tests only) -------------------------------------


def columns_found(basis: Bits, columns: Bits) -> int:
    """How many basis vectors are columns of the true diffusion matrix (``columns``: one
    column per row, ``(input bits, output bits)`` 0/1)."""
    truth = {row.tobytes() for row in np.ascontiguousarray(columns, dtype=np.uint8)}
    return sum(row.tobytes() in truth for row in np.ascontiguousarray(basis, dtype=np.uint8))


def inputs_agreement(inputs: Bits, truth: Bits, *, basis: Bits, columns: Bits) -> float:
    """Share of records whose recovered coordinates equal their true pre-diffusion Bloom
    filter up to the permutation that maps basis vectors to the diffusion matrix's columns.

    ``inputs``: recovered ``(records, rank)``; ``truth``: ``(records, input bits)``;
    ``basis``: ``(rank, output bits)``; ``columns``: the true matrix, one column per row,
    ``(input bits, output bits)``. Coordinate ``l`` stands for input ``i`` when basis vector
    ``l`` is column ``i`` (the first such ``i`` where columns repeat). A record agrees when
    every such coordinate equals its input bit, every other coordinate is 0, and every other
    input bit that reaches the output is 0 (an input whose column is all zero is erased by
    the diffusion, and nobody can recover it).
    """
    if len(inputs) == 0:
        return 0.0
    first: dict[bytes, int] = {}
    for index, column in enumerate(np.ascontiguousarray(columns, dtype=np.uint8)):
        first.setdefault(column.tobytes(), index)
    mapped = [first.get(row.tobytes()) for row in np.ascontiguousarray(basis, dtype=np.uint8)]
    agree = np.ones(len(inputs), dtype=bool)
    covered = np.zeros(truth.shape[1], dtype=bool)
    for coordinate, position in enumerate(mapped):
        if position is None:
            agree &= inputs[:, coordinate] == 0
        else:
            agree &= inputs[:, coordinate] == truth[:, position]
            covered[position] = True
    visible = columns.any(axis=1)
    agree &= ~truth[:, visible & ~covered].any(axis=1)
    return float(agree.mean())
