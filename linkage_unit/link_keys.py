"""Link keys: what each party gets back from a run, one key for every record it sent.

Records in one cluster share a link key (per party in ``per_party`` mode); unmatched
records get fresh ones, so a party cannot tell which of its records were linked. Keys are
128 bits from a CSPRNG, as 26 lower-case base32 characters, released as (record position,
link key) pairs in random order.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.messages import LinkKeyMode, link_keys_digest

__all__ = ["KEY_BYTES", "PartyLinkKeys", "fresh_keys", "issue_link_keys"]

KEY_BYTES = 16

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyLinkKeys:
    """One party's keys in release order: ``positions[i]`` gets ``link_keys[i]``."""

    positions: list[int]
    link_keys: list[str]
    keys_sha256: str


def fresh_keys(count: int, random_bytes: RandomBytes) -> list[str]:
    raw = random_bytes(count * KEY_BYTES)
    keys = [
        base64.b32encode(raw[index : index + KEY_BYTES]).decode("ascii").rstrip("=").lower()
        for index in range(0, len(raw), KEY_BYTES)
    ]
    if len(set(keys)) != len(keys):  # 2^-128-scale; a broken RNG must not merge people
        raise RuntimeError("random source produced a repeated link key")
    return keys


def issue_link_keys(
    clusters: Mapping[str, npt.NDArray[np.int64]],
    mode: LinkKeyMode,
    *,
    random_bytes: RandomBytes = os.urandom,
) -> dict[str, PartyLinkKeys]:
    """Give every record of every party a link key, per its cluster id, in random order."""
    result: dict[str, PartyLinkKeys] = {}
    shared: dict[int, str] = {}
    if mode is LinkKeyMode.SHARED:
        cluster_ids = sorted({int(c) for ids in clusters.values() for c in np.unique(ids)})
        shared = dict(zip(cluster_ids, fresh_keys(len(cluster_ids), random_bytes), strict=True))
    for party, ids in clusters.items():
        if mode is LinkKeyMode.SHARED:
            table = shared
        else:
            unique = [int(c) for c in np.unique(ids)]
            table = dict(zip(unique, fresh_keys(len(unique), random_bytes), strict=True))
        seed = int.from_bytes(random_bytes(32), "little")
        order = np.random.default_rng(seed).permutation(len(ids))
        positions = [int(position) for position in order]
        keys = [table[int(ids[position])] for position in positions]
        result[party] = PartyLinkKeys(
            positions=positions, link_keys=keys, keys_sha256=link_keys_digest(positions, keys)
        )
    return result
