"""Keyless mining of correlated bit sets: the bits a token sets, found from the encodings alone.

Stage: privacy evaluation (shared by the pattern-mining and signature attacks). A token (a
bigram, a sex code, a birth month) sets the same bits in every record that has it, so those
bits occur together far more often than chance. The miner finds such maximal sets and the
records that carry each, in the spirit of the maximal-frequent-itemset mining of Christen et
al. (PAKDD 2018) and Vidanage et al. (ICDE 2019), but seeded by pairwise correlation so it is a
few BLAS products rather than an itemset lattice:

1. phi (Pearson) correlation of every pair of bits; each bit and its ``partners`` most
   correlated bits are one seed set;
2. alternate, for every seed at once: the members of a set are the records with at least
   ``c`` of its bits, ``c`` the least count that chance alone (each bit at its own rate)
   reaches in at most ``chance`` of records; the set becomes the bits whose rate among the
   members closes at least ``enrichment`` of the gap to 1 (a token's bits are always set in
   its members, other bits stay at their base rate);
3. keep the stable sets with enough bits and members, one per distinct bit set.

Rare tokens (a birth day in 1/31 of records) have weak pairwise correlation, but one
correlated partner is enough: the alternation grows the seed to the whole token. Hardening
that flips token bits at random (BLIP-style) only lowers the enrichment of a token's bits;
hardening that makes the bits of a token independent of its presence (XOR-folding at a fill
near one half, keyed diffusion) leaves nothing to find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BitSignature", "MiningSettings", "bit_correlation", "mine_signatures"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MiningSettings:
    """Knobs of the miner; the defaults find the default schema's date tokens at 3,000 records."""

    partners: int = 5
    rounds: int = 6
    enrichment: float = 0.6
    chance: float = 0.005
    min_bits: int = 4
    max_bits: int = 128
    min_members: int = 10
    max_seeds: int = 2048

    def __post_init__(self) -> None:
        if self.partners < 1 or self.rounds < 1 or self.min_bits < 2:
            raise ValueError("the miner needs at least one partner, one round and two bits")
        if not (0.0 < self.enrichment < 1.0 and 0.0 < self.chance < 1.0):
            raise ValueError("enrichment and chance are fractions strictly between 0 and 1")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class BitSignature:
    """A mined set of bits (positions within the view) and the records that carry it."""

    bits: tuple[int, ...]
    members: npt.NDArray[np.bool_]
    threshold: int

    @property
    def frequency(self) -> float:
        return float(self.members.mean()) if len(self.members) else 0.0


def bit_correlation(bits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """phi correlation of every pair of bits (0 where a bit never or always occurs)."""
    records = max(len(bits), 1)
    rate = bits.mean(axis=0, dtype=np.float64)
    together = (bits.T @ bits).astype(np.float64) / records
    covariance = together - np.outer(rate, rate)
    spread = np.sqrt(rate * (1.0 - rate))
    scale = np.outer(spread, spread)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(scale > 0, covariance / scale, 0.0)
    np.fill_diagonal(phi, 0.0)
    return phi.astype(np.float32)


def _log_binomial_tail(size: int, rate: float) -> npt.NDArray[np.float64]:
    """``log P(Binomial(size, rate) >= c)`` for c = 0..size."""
    rate = min(max(rate, 1e-9), 1.0 - 1e-9)
    counts = np.arange(size + 1)
    log_pmf = (
        np.array(
            [
                math.lgamma(size + 1) - math.lgamma(c + 1) - math.lgamma(size - c + 1)
                for c in range(size + 1)
            ]
        )
        + counts * math.log(rate)
        + (size - counts) * math.log1p(-rate)
    )
    return np.logaddexp.accumulate(log_pmf[::-1])[::-1]


def _member_thresholds(
    sizes: npt.NDArray[np.int64], rates: npt.NDArray[np.float64], chance: float
) -> npt.NDArray[np.float32]:
    """Per set, the least count of its bits that chance reaches in at most ``chance`` of
    records (never more than the set's size)."""
    limit = math.log(chance)
    out = np.zeros(len(sizes), dtype=np.float32)
    memo: dict[tuple[int, float], int] = {}
    for index, (size, rate) in enumerate(zip(sizes.tolist(), rates.tolist(), strict=True)):
        if size == 0:
            out[index] = 1.0
            continue
        key = (size, round(rate, 3))
        if key not in memo:
            tail = _log_binomial_tail(size, key[1])
            passing = np.flatnonzero(tail <= limit)
            memo[key] = int(passing[0]) if len(passing) else size
        out[index] = float(min(max(memo[key], 1), size))
    return out


def mine_signatures(
    bits: npt.NDArray[np.float32], settings: MiningSettings = MiningSettings()
) -> tuple[BitSignature, ...]:
    """Correlated bit sets of a ``(records, bits)`` 0/1 matrix, most frequent first."""
    records, width = bits.shape
    if records == 0 or width < 2:
        return ()
    rate = bits.mean(axis=0, dtype=np.float64)
    phi = bit_correlation(bits)
    partners = min(settings.partners, width - 1)
    seeds = np.arange(width)
    if width > settings.max_seeds:  # the bits with the strongest partner seed first
        seeds = np.sort(np.argsort(-phi.max(axis=1), kind="stable")[: settings.max_seeds])
    nearest = np.argpartition(-phi[seeds], partners, axis=1)[:, :partners]
    sets = np.zeros((len(seeds), width), dtype=np.float32)
    sets[np.arange(len(seeds)), seeds] = 1.0
    sets[np.arange(len(seeds))[:, None], nearest] = 1.0
    room = np.maximum(1.0 - rate, 1e-9)[None, :]
    members = np.zeros((records, len(seeds)), dtype=bool)
    for _ in range(settings.rounds):
        sizes = sets.sum(axis=1).astype(np.int64)
        mean_rate = (sets @ rate.astype(np.float32)) / np.maximum(sizes, 1)
        thresholds = _member_thresholds(sizes, mean_rate.astype(np.float64), settings.chance)
        members = (bits @ sets.T) >= thresholds[None, :] - 0.5
        counts = members.sum(axis=0)
        inside = (members.T.astype(np.float32) @ bits) / np.maximum(counts, 1)[:, None]
        enriched = (inside - rate[None, :]) / room
        grown = (enriched >= settings.enrichment) & (counts[:, None] >= settings.min_members)
        too_many = grown.sum(axis=1) > settings.max_bits
        for row in np.flatnonzero(too_many):  # keep the most enriched bits of an outsize set
            keep = np.argsort(-enriched[row])[: settings.max_bits]
            grown[row] = False
            grown[row, keep] = True
        sets = grown.astype(np.float32)
    found: dict[tuple[int, ...], BitSignature] = {}
    sizes = sets.sum(axis=1).astype(np.int64)
    counts = members.sum(axis=0)
    for row in np.flatnonzero(
        (sizes >= settings.min_bits)
        & (counts >= settings.min_members)
        & (counts <= records - settings.min_members)
    ):
        key = tuple(np.flatnonzero(sets[row]).tolist())
        if key not in found:
            # members were drawn for the set before its last update: redraw for the final set
            found[key] = _signature(bits, key, rate, settings.chance)
    signatures = [
        signature
        for signature in found.values()
        if settings.min_members <= int(signature.members.sum()) <= records - settings.min_members
    ]
    return tuple(sorted(signatures, key=lambda signature: (-signature.frequency, signature.bits)))


def _signature(
    bits: npt.NDArray[np.float32],
    key: tuple[int, ...],
    rate: npt.NDArray[np.float64],
    chance: float,
) -> BitSignature:
    columns = np.asarray(key, dtype=np.intp)
    threshold = int(
        _member_thresholds(
            np.array([len(key)], dtype=np.int64), np.array([rate[columns].mean()]), chance
        )[0]
    )
    members = bits[:, columns].sum(axis=1) >= threshold - 0.5
    return BitSignature(bits=key, members=members, threshold=threshold)
