"""Issue keys, the pipeline's last stage: what each party gets back from a run, one key for
every record it sent.

Records in one cluster share a link key (per party in ``per_party`` mode); unmatched
records get fresh ones, so a party cannot tell which of its records were linked. Keys are
128 bits from a CSPRNG, as 26 lower-case base32 characters, released as (record position,
link key) pairs in random order.

A 1M x 1M run issues two million keys, so they are spelled and looked up as arrays
(``base32_keys``); ``reference_base32_keys`` is the standard library's spelling beside it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.messages import LinkKeyMode, link_keys_digest

__all__ = [
    "KEY_BYTES",
    "KEY_CHARACTERS",
    "PartyLinkKeys",
    "base32_keys",
    "fresh_keys",
    "issue_link_keys",
    "reference_base32_keys",
    "reference_issue_link_keys",
]

KEY_BYTES = 16
KEY_CHARACTERS = 26  # ceil(128 / 5): RFC 4648 base32 of 16 bytes, padding dropped

RandomBytes = Callable[[int], bytes]

_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", dtype=np.uint8)


@dataclass(frozen=True, slots=True, kw_only=True)
class PartyLinkKeys:
    """One party's keys in release order: ``positions[i]`` gets ``link_keys[i]``."""

    positions: list[int]
    link_keys: list[str]
    keys_sha256: str


def reference_base32_keys(raw: bytes) -> list[str]:
    """Each ``KEY_BYTES`` of ``raw`` as lower-case base32 without padding, one at a time."""
    return [
        base64.b32encode(raw[index : index + KEY_BYTES]).decode("ascii").rstrip("=").lower()
        for index in range(0, len(raw), KEY_BYTES)
    ]


def base32_keys(raw: bytes) -> npt.NDArray[np.str_]:
    """``reference_base32_keys`` for every key at once. A key is a 128-bit big-endian number
    (two 64-bit halves) with two zero bits appended; character i is its bits 5i to 5i + 4."""
    halves = np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    high, low = halves[:, 0], halves[:, 1]
    spelled = np.empty((len(halves), KEY_CHARACTERS), dtype=np.uint8)
    for index in range(KEY_CHARACTERS):
        end = 5 * index + 5  # one past the character's last bit, counted from the top
        if end <= 64:
            five = high >> np.uint64(64 - end)
        elif end <= 128 and 5 * index >= 64:
            five = low >> np.uint64(128 - end)
        elif end <= 128:  # straddles the halves
            five = (high << np.uint64(end - 64)) | (low >> np.uint64(128 - end))
        else:  # the last character: three bits and the two appended zeros
            five = low << np.uint64(end - 128)
        spelled[:, index] = _ALPHABET[five & np.uint64(31)]
    return spelled.view(f"S{KEY_CHARACTERS}").ravel().astype(f"U{KEY_CHARACTERS}")


def _distinct(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The distinct values, ascending (a sort: numpy's hashing ``unique`` is slower here)."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _fresh_key_array(count: int, random_bytes: RandomBytes) -> npt.NDArray[np.str_]:
    raw = random_bytes(count * KEY_BYTES)
    # 2^-128-scale; a broken RNG must not merge people. Keys repeat only where their first
    # halves do, which a sort finds; only then are the whole keys compared.
    first = np.sort(np.frombuffer(raw, dtype="<u8")[::2])
    keys = base32_keys(raw)
    if np.any(first[1:] == first[:-1]) and len(set(keys.tolist())) != len(keys):
        raise RuntimeError("random source produced a repeated link key")
    return keys


def fresh_keys(count: int, random_bytes: RandomBytes) -> list[str]:
    """``count`` new keys from ``random_bytes``; refused if the source repeats one."""
    return list(_fresh_key_array(count, random_bytes).tolist())


def issue_link_keys(
    clusters: Mapping[str, npt.NDArray[np.int64]],
    mode: LinkKeyMode,
    *,
    random_bytes: RandomBytes = os.urandom,
) -> dict[str, PartyLinkKeys]:
    """Give every record of every party a link key, per its cluster id, in random order.

    Keys go to cluster ids in ascending order, and the random bytes are drawn in the order
    they always were (the keys, then 32 bytes of shuffle seed per party), so a fixed source
    gives the same keys and order as the one-key-at-a-time version this replaced."""
    result: dict[str, PartyLinkKeys] = {}
    if mode is LinkKeyMode.SHARED:
        every = [np.asarray(ids, dtype=np.int64) for ids in clusters.values()]
        shared_ids = _distinct(np.concatenate(every)) if every else np.zeros(0, np.int64)
        shared_keys = _fresh_key_array(len(shared_ids), random_bytes)
    for party, ids in clusters.items():
        ids = np.asarray(ids, dtype=np.int64)
        if mode is LinkKeyMode.SHARED:
            table_ids, table_keys = shared_ids, shared_keys
        else:
            table_ids = _distinct(ids)
            table_keys = _fresh_key_array(len(table_ids), random_bytes)
        seed = int.from_bytes(random_bytes(32), "little")
        order = np.random.default_rng(seed).permutation(len(ids))
        positions: list[int] = order.tolist()
        keys: list[str] = table_keys[np.searchsorted(table_ids, ids[order])].tolist()
        result[party] = PartyLinkKeys(
            positions=positions, link_keys=keys, keys_sha256=link_keys_digest(positions, keys)
        )
    return result


def reference_issue_link_keys(
    clusters: Mapping[str, npt.NDArray[np.int64]],
    mode: LinkKeyMode,
    *,
    random_bytes: RandomBytes = os.urandom,
) -> dict[str, PartyLinkKeys]:
    """``issue_link_keys`` one key and one record at a time, through dicts."""
    result: dict[str, PartyLinkKeys] = {}
    shared: dict[int, str] = {}
    if mode is LinkKeyMode.SHARED:
        cluster_ids = sorted({int(c) for ids in clusters.values() for c in ids})
        raw = random_bytes(len(cluster_ids) * KEY_BYTES)
        shared = dict(zip(cluster_ids, reference_base32_keys(raw), strict=True))
    for party, ids in clusters.items():
        table = shared
        if mode is not LinkKeyMode.SHARED:
            own = sorted({int(c) for c in ids})
            table = dict(zip(own, reference_base32_keys(random_bytes(len(own) * KEY_BYTES)), strict=True))  # fmt: skip
        seed = int.from_bytes(random_bytes(32), "little")
        positions = [int(p) for p in np.random.default_rng(seed).permutation(len(ids))]
        keys = [table[int(ids[position])] for position in positions]
        digest = hashlib.sha256()
        for position, key in zip(positions, keys, strict=True):
            digest.update(f"{position},{key}\n".encode("ascii"))
        result[party] = PartyLinkKeys(
            positions=positions, link_keys=keys, keys_sha256=digest.hexdigest()
        )
    return result
