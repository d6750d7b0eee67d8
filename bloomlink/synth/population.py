"""The synthetic people: one true identity each, before any department records them.

Stage: test-data generation. Every department extract is drawn from one ``Population``; two
records of the same person index are the same person (the truth the benchmarks score
against). Everything is vectorised with numpy; per-person Python runs only to format strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bloomlink.synth.tables import NameTables

__all__ = ["Population", "draw_population", "draw_postcodes", "unique_random_integers"]

# Inward codes never use C, I, K, M, O or V in their last two letters (Royal Mail PAF rules).
INWARD_LETTERS = np.array(list("ABDEFGHJLNPQRSTUWXYZ"), dtype=object)
MIDDLE_NAME_RATE = 0.6
SECOND_MIDDLE_NAME_RATE = 0.08
DOUBLE_BARRELLED_RATE = 0.02
# Earliest and latest birth dates drawn (days since 1970-01-01 via datetime64).
EARLIEST_BIRTH = np.datetime64("1935-01-01")
LATEST_BIRTH = np.datetime64("2019-12-31")


@dataclass(frozen=True, slots=True, kw_only=True)
class Population:
    """Columns of true values, one row per synthetic person.

    ``sex`` is ``"F"`` or ``"M"``; ``middle_names`` is ``""`` for people without one.
    ``other_surname`` is a maiden or married name and ``other_postcode`` a previous address:
    corruption draws on them so every record showing a changed surname or a move agrees.
    """

    person_ids: npt.NDArray[np.object_]
    sex: npt.NDArray[np.str_]
    forenames: npt.NDArray[np.object_]
    middle_names: npt.NDArray[np.object_]
    surnames: npt.NDArray[np.object_]
    other_surnames: npt.NDArray[np.object_]
    birth_years: npt.NDArray[np.int16]
    birth_months: npt.NDArray[np.int8]
    birth_days: npt.NDArray[np.int8]
    postcodes: npt.NDArray[np.object_]
    other_postcodes: npt.NDArray[np.object_]

    def __post_init__(self) -> None:
        count = len(self.person_ids)
        for name in self.__slots__:
            if len(getattr(self, name)) != count:
                raise ValueError(f"population column {name} has the wrong length")

    def __len__(self) -> int:
        return len(self.person_ids)


def unique_random_integers(
    rng: np.random.Generator, count: int, *, low: int, high: int
) -> npt.NDArray[np.int64]:
    """``count`` distinct integers in ``[low, high)`` in random order, using O(count) memory.

    Draws with replacement and tops up the duplicates, so the space may be far larger than
    ``count`` (e.g. 10^12 UPN serials) without materialising it.
    """
    if count > (high - low) // 2:
        raise ValueError("identifier space too small for the requested count")
    values = np.unique(rng.integers(low, high, size=count, dtype=np.int64))
    while len(values) < count:
        extra = rng.integers(low, high, size=count - len(values), dtype=np.int64)
        values = np.unique(np.concatenate([values, extra]))
    return rng.permutation(values)


def _draw_names(
    rng: np.random.Generator,
    sex: npt.NDArray[np.str_],
    tables: NameTables,
) -> npt.NDArray[np.object_]:
    names = np.empty(len(sex), dtype=object)
    for code, pool, weights in (
        ("F", tables.female_forenames, tables.female_weights),
        ("M", tables.male_forenames, tables.male_weights),
    ):
        where = np.flatnonzero(sex == code)
        names[where] = pool[rng.choice(len(pool), size=len(where), p=weights)]
    return names


def _draw_surnames(
    rng: np.random.Generator, count: int, tables: NameTables
) -> npt.NDArray[np.object_]:
    pool, weights = tables.surnames, tables.surname_weights
    surnames = pool[rng.choice(len(pool), size=count, p=weights)]
    # A few people carry a double-barrelled name built from two common ones (Smith-Jones).
    barrelled = np.flatnonzero(rng.random(count) < DOUBLE_BARRELLED_RATE)
    second = pool[rng.choice(len(pool), size=len(barrelled), p=weights)]
    surnames[barrelled] = [
        f"{first}-{other}" if first != other else first
        for first, other in zip(surnames[barrelled], second, strict=True)
    ]
    return surnames


def draw_postcodes(
    rng: np.random.Generator, count: int, tables: NameTables
) -> npt.NDArray[np.object_]:
    """``count`` postcodes: a weighted outward code, a space, and a valid random inward code."""
    outward = tables.outward_codes[
        rng.choice(len(tables.outward_codes), size=count, p=tables.outward_weights)
    ]
    return _with_inward(rng, outward)


def _with_inward(
    rng: np.random.Generator, outward: npt.NDArray[np.object_]
) -> npt.NDArray[np.object_]:
    count = len(outward)
    digits = rng.integers(0, 10, size=count)
    letters = INWARD_LETTERS[rng.integers(0, len(INWARD_LETTERS), size=(count, 2))]
    return np.array(
        [
            f"{out} {digit}{first}{second}"
            for out, digit, first, second in zip(
                outward.tolist(),
                digits.tolist(),
                letters[:, 0].tolist(),
                letters[:, 1].tolist(),
                strict=True,
            )
        ],
        dtype=object,
    )


def _draw_birth_dates(
    rng: np.random.Generator, count: int
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    # Mostly young adults (the people justice and education data share), with a long tail.
    span = int((LATEST_BIRTH - EARLIEST_BIRTH).astype(int))
    centre = int((np.datetime64("1996-06-30") - EARLIEST_BIRTH).astype(int))
    uniform = rng.uniform(0, span, size=count)
    offsets = np.where(
        rng.random(count) < 0.7, rng.normal(centre, 12 * 365.25, size=count), uniform
    )
    # Redraw the normal's tails uniformly rather than clipping (no pile-up on the bounds).
    outside = (offsets < 0) | (offsets > span)
    offsets[outside] = uniform[outside]
    offsets = offsets.astype(np.int64)
    dates = EARLIEST_BIRTH + offsets.astype("timedelta64[D]")
    years = dates.astype("datetime64[Y]")
    months = dates.astype("datetime64[M]")
    year = (years.astype(np.int64) + 1970).astype(np.int16)
    month = (months - years.astype("datetime64[M]")).astype(np.int64) + 1
    day = (dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month.astype(np.int8), day.astype(np.int8)


def _draw_middle_names(
    rng: np.random.Generator,
    sex: npt.NDArray[np.str_],
    forenames: npt.NDArray[np.object_],
    tables: NameTables,
) -> npt.NDArray[np.object_]:
    count = len(sex)
    first = _draw_names(rng, sex, tables)
    second = _draw_names(rng, sex, tables)
    has_middle = rng.random(count) < MIDDLE_NAME_RATE
    has_second = has_middle & (rng.random(count) < SECOND_MIDDLE_NAME_RATE)
    middle = np.where(has_middle & (first != forenames), first, "").astype(object)
    both = np.flatnonzero(has_second & (middle != "") & (second != first) & (second != forenames))
    middle[both] = [f"{one} {two}" for one, two in zip(middle[both], second[both], strict=True)]
    return middle


def draw_population(rng: np.random.Generator, count: int, tables: NameTables) -> Population:
    """``count`` new people with random-looking, unique person ids."""
    sex = np.where(rng.random(count) < 0.5, "F", "M")
    forenames = _draw_names(rng, sex, tables)
    middle_names = _draw_middle_names(rng, sex, forenames, tables)
    surnames = _draw_surnames(rng, count, tables)
    other_surnames = _draw_surnames(rng, count, tables)
    same = np.flatnonzero(other_surnames == surnames)
    other_surnames[same] = tables.surnames[(rng.integers(0, 50, size=len(same)))]
    other_surnames[same[other_surnames[same] == surnames[same]]] = "Smith-Jones"
    years, months, days = _draw_birth_dates(rng, count)
    postcodes = draw_postcodes(rng, count, tables)
    # Half of moves stay in the same district (new inward code), half go anywhere.
    local = rng.random(count) < 0.5
    outward_here = np.array([code.split(" ")[0] for code in postcodes.tolist()], dtype=object)
    moved_near = _with_inward(rng, outward_here)
    moved_far = draw_postcodes(rng, count, tables)
    other_postcodes = np.where(local, moved_near, moved_far).astype(object)
    unchanged = np.flatnonzero(other_postcodes == postcodes)
    other_postcodes[unchanged] = draw_postcodes(rng, len(unchanged), tables)
    ids = unique_random_integers(rng, count, low=0, high=16**12)
    person_ids = np.array([f"{value:012x}" for value in ids.tolist()], dtype=object)
    return Population(
        person_ids=person_ids,
        sex=sex,
        forenames=forenames,
        middle_names=middle_names,
        surnames=surnames,
        other_surnames=other_surnames,
        birth_years=years,
        birth_months=months,
        birth_days=days,
        postcodes=postcodes,
        other_postcodes=other_postcodes,
    )
