"""Reference tables for the synthetic data generator (names, nicknames, variants, postcodes).

Stage: test-data generation, before any party normalises or encodes. Loaded once from the CSV
files shipped in ``bloomlink/synth/data`` and ``protocol/data/nicknames.csv``.
"""

from __future__ import annotations

import csv
import functools
import io
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

__all__ = ["NameTables", "load_tables"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NameTables:
    """Everything the population and corruption steps draw from.

    Name arrays are numpy object arrays of ``str`` so that indexing with millions of draws
    shares the same string objects instead of copying them.
    """

    female_forenames: npt.NDArray[np.object_]
    female_weights: npt.NDArray[np.float64]
    male_forenames: npt.NDArray[np.object_]
    male_weights: npt.NDArray[np.float64]
    surnames: npt.NDArray[np.object_]
    surname_weights: npt.NDArray[np.float64]
    outward_codes: npt.NDArray[np.object_]
    outward_weights: npt.NDArray[np.float64]
    # lower-case formal forename -> nicknames (lower-case), protocol list plus extras
    nicknames: dict[str, tuple[str, ...]]
    # protocol list only: nickname -> canonical (what the normaliser undoes)
    protocol_nicknames: dict[str, str]
    # exact spelling -> other spellings of the same name, per field
    forename_variants: dict[str, tuple[str, ...]]
    surname_variants: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        pairs = (
            (self.female_forenames, self.female_weights),
            (self.male_forenames, self.male_weights),
            (self.surnames, self.surname_weights),
            (self.outward_codes, self.outward_weights),
        )
        for names, weights in pairs:
            if len(names) == 0 or names.shape != weights.shape:
                raise ValueError("each name table needs one positive weight per entry")
            if not np.isclose(weights.sum(), 1.0):
                raise ValueError("name table weights must be probabilities summing to 1")


def _read_csv(package: str, name: str) -> list[dict[str, str]]:
    # Data folders are plain directories inside their package, not packages themselves.
    text = resources.files(package).joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _weighted(
    rows: list[dict[str, str]], column: str = "name"
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.float64]]:
    names = np.array([row[column] for row in rows], dtype=object)
    counts = np.array([float(row["count"]) for row in rows])
    return names, counts / counts.sum()


@functools.cache
def load_tables() -> NameTables:
    """The shipped tables (read once per process; they hold no secrets)."""
    forenames = _read_csv("bloomlink.synth", "forenames.csv")
    female, female_w = _weighted([row for row in forenames if row["sex"] == "F"])
    male, male_w = _weighted([row for row in forenames if row["sex"] == "M"])
    surnames, surname_w = _weighted(_read_csv("bloomlink.synth", "surnames.csv"))
    outward, outward_w = _weighted(
        _read_csv("bloomlink.synth", "postcode_districts.csv"), column="outward"
    )

    protocol_pairs = _read_csv("protocol", "nicknames.csv")
    protocol_nicknames = {row["nickname"]: row["canonical"] for row in protocol_pairs}
    by_formal: defaultdict[str, list[str]] = defaultdict(list)
    for row in protocol_pairs:
        by_formal[row["canonical"]].append(row["nickname"])
    for row in _read_csv("bloomlink.synth", "nicknames_extra.csv"):
        by_formal[row["canonical"]].append(row["nickname"])

    variants: dict[str, defaultdict[str, list[str]]] = {
        "forename": defaultdict(list),
        "surname": defaultdict(list),
    }
    for row in _read_csv("bloomlink.synth", "name_variants.csv"):
        spellings = row["spellings"].split("|")
        for spelling in spellings:
            others = [other for other in spellings if other != spelling]
            variants[row["field"]][spelling].extend(others)

    return NameTables(
        female_forenames=female,
        female_weights=female_w,
        male_forenames=male,
        male_weights=male_w,
        surnames=surnames,
        surname_weights=surname_w,
        outward_codes=outward,
        outward_weights=outward_w,
        nicknames={formal: tuple(dict.fromkeys(nicks)) for formal, nicks in by_formal.items()},
        protocol_nicknames=protocol_nicknames,
        forename_variants={k: tuple(dict.fromkeys(v)) for k, v in variants["forename"].items()},
        surname_variants={k: tuple(dict.fromkeys(v)) for k, v in variants["surname"].items()},
    )
