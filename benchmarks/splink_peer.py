"""Plaintext Splink 5 as the quality anchor: a Fellegi-Sunter model trained by EM on the
plaintext values, run in its own virtual environment (it pins its own DuckDB and pandas).

The venv lives OUTSIDE the repository (default ``~/.cache/bloomlink/splink-venv``; override
with ``BLOOMLINK_SPLINK_VENV``) and is built on first use. :func:`run_splink` hands it one job
on standard input and reads back each record's cluster id (Splink's own clustering of the
pairs at match probability >= 0.5: connected components, or, when datasets are named
duplicate-free, its single-best-links clustering, which keeps at most one record of each of
them per cluster) and the pairs it scored at >= 0.5. This is the one Splink runner of the
benchmarks (quality.py, dedupe.py).

    python benchmarks/splink_peer.py     # create (if missing) and print its Splink version

Settings (written for this benchmark, following Splink's documented out-of-the-box
comparisons) over the fields bloomlink encodes: names with ``NameComparison`` (exact, then
Jaro-Winkler 0.92 / 0.88 / 0.7), dates of birth with ``DateOfBirthComparison``, UK postcodes
with ``PostcodeComparison``, sex exact; FEBRL address lines and suburb by Jaro-Winkler,
street number and state exact, its Australian postcode by Levenshtein (the social-security
id is left out, as the FEBRL schema leaves it out of the CLK). ``probability_two_random_records_
match`` from deterministic rules, u from 10M random pairs (seeded), m by EM on two blocking
rules; predictions blocked on several rules so that each true pair is met by one (on synth:
the date of birth alone, the postcode, both names, and month of birth with the surname's
first letters; a pair whose names and postcode changed still shares its date of birth).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SPLINK_PACKAGES = ("splink==5.0.0", "pandas")
REPOSITORY = Path(__file__).resolve().parent.parent

__all__ = ["SplinkResult", "ensure_splink_python", "run_splink"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SplinkResult:
    """Per dataset, each record's cluster id (connected components at p >= 0.5), and the pairs
    Splink scored at p >= 0.5 as (dataset, record) index arrays."""

    clusters: list[npt.NDArray[np.int64]]
    pair_left: npt.NDArray[np.int64]  # global record numbers (datasets concatenated)
    pair_right: npt.NDArray[np.int64]
    seconds: float


def splink_venv_path() -> Path:
    configured = os.environ.get("BLOOMLINK_SPLINK_VENV")
    path = Path(configured) if configured else Path.home() / ".cache" / "bloomlink" / "splink-venv"
    path = path.expanduser().resolve()
    if path == REPOSITORY or REPOSITORY in path.parents:
        raise SystemExit(f"the Splink venv must live outside the repository, not at {path}")
    return path


def ensure_splink_python() -> Path:
    """The Splink venv's python, creating the venv and installing Splink if missing."""
    venv = splink_venv_path()
    python = venv / "bin" / "python"
    check = subprocess.run(
        [str(python), "-c", "import splink"], capture_output=True, check=False
    ) if python.exists() else None  # fmt: skip
    if check is not None and check.returncode == 0:
        return python
    print(f"creating the Splink venv at {venv} (a minute or two)", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *SPLINK_PACKAGES],
        check=True,
    )  # fmt: skip
    return python


_SNIPPET = r"""
import json, sys, time, logging
import pandas as pd
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on

logging.disable(logging.WARNING)
job = json.loads(sys.stdin.buffer.read())
started = time.perf_counter()
frames = []
for number, dataset in enumerate(job["datasets"]):
    frame = pd.DataFrame(dataset["rows"], columns=job["columns"])
    frame.insert(0, "unique_id", range(len(frame)))
    frame["source_dataset"] = dataset["name"]
    frames.append(frame.replace({"": None}))
if job["kind"] == "febrl":
    comparisons = [
        cl.NameComparison("given_name"),
        cl.NameComparison("surname"),
        cl.DateOfBirthComparison("date_of_birth", input_is_string=True, datetime_format="%Y%m%d"),
        cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
        cl.JaroWinklerAtThresholds("address_2", [0.9, 0.7]),
        cl.JaroWinklerAtThresholds("suburb", [0.9, 0.7]),
        cl.ExactMatch("street_number"),
        cl.ExactMatch("state"),
        cl.LevenshteinAtThresholds("postcode", [1]),
    ]
    predict_rules = [
        block_on("given_name", "surname"), block_on("date_of_birth"),
        block_on("postcode", "street_number"), block_on("surname", "suburb"),
        block_on("given_name", "address_1"),
    ]
    deterministic = [block_on("given_name", "surname", "date_of_birth")]
    em_rules = [block_on("date_of_birth"), block_on("given_name", "surname")]
    name_fields = ("given_name", "surname")
else:
    comparisons = [
        cl.NameComparison("forename"),
        cl.NameComparison("surname"),
        cl.DateOfBirthComparison("date_of_birth", input_is_string=True, datetime_format="%Y-%m-%d"),
        cl.ExactMatch("sex"),
        cl.PostcodeComparison("postcode"),
    ]
    predict_rules = [
        block_on("date_of_birth"), block_on("postcode"), block_on("forename", "surname"),
        block_on("substr(date_of_birth, 1, 7)", "substr(surname, 1, 2)"),
    ]
    deterministic = [block_on("forename", "surname", "date_of_birth")]
    em_rules = [block_on("date_of_birth"), block_on("forename", "surname")]
settings = SettingsCreator(
    link_type=job["link_type"],
    comparisons=comparisons,
    blocking_rules_to_generate_predictions=predict_rules,
    retain_intermediate_calculation_columns=False,
)
db_api = DuckDBAPI()
tables = [db_api.register(frame, dataset_display_name=dataset["name"])
          for frame, dataset in zip(frames, job["datasets"])]
linker = Linker(tables if len(tables) > 1 else tables[0], settings)
linker.training.estimate_probability_two_random_records_match(deterministic, recall=0.7)
linker.training.estimate_u_using_random_sampling(max_pairs=1e7, seed=1)
for rule in em_rules:
    linker.training.estimate_parameters_using_expectation_maximisation(rule)
predictions = linker.inference.predict(threshold_match_probability=0.5)
if job["duplicate_free"]:
    clustered = linker.clustering.cluster_using_single_best_links(
        predictions, duplicate_free_datasets=job["duplicate_free"], threshold_match_probability=0.5
    ).as_pandas_dataframe()
else:
    clustered = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=0.5
    ).as_pandas_dataframe()
pairs = predictions.as_pandas_dataframe()
offsets, total = {}, 0
for dataset in job["datasets"]:
    offsets[dataset["name"]] = total
    total += len(dataset["rows"])
only = job["datasets"][0]["name"]
def sources(frame, column):
    return frame[column] if column in frame.columns else [only] * len(frame)
def glob(frame, side):
    return [offsets[s] + int(u) for s, u in
            zip(sources(frame, "source_dataset" + side), frame["unique_id" + side])]
ids = {}
for source, uid, cluster in zip(sources(clustered, "source_dataset"), clustered["unique_id"],
                                clustered["cluster_id"]):
    ids[offsets[source] + int(uid)] = str(cluster)
names = {}
label = [names.setdefault(ids.get(n, f"single-{n}"), len(names)) for n in range(total)]
print(json.dumps({"clusters": label, "left": glob(pairs, "_l"), "right": glob(pairs, "_r"),
                  "seconds": time.perf_counter() - started}))
"""


def run_splink(
    *,
    kind: str,
    columns: Sequence[str],
    datasets: Sequence[tuple[str, Sequence[Sequence[str | None]]]],
    duplicate_free: Sequence[str] = (),
    timeout: float = 3600,
) -> SplinkResult:
    """Run Splink on plaintext rows: ``kind`` "synth" (forename, surname, date_of_birth as
    YYYY-MM-DD, sex, postcode) or "febrl" (the FEBRL columns, dates as YYYYMMDD);
    ``link_and_dedupe`` over several datasets, ``dedupe_only`` over one, ``link_only`` when
    every dataset is ``duplicate_free`` (at most one record per person: clustered by single
    best links, as bloomlink's one-to-one solve)."""
    names = [name for name, _ in datasets]
    if set(duplicate_free) - set(names):
        raise ValueError("duplicate_free names a dataset that is not given")
    if len(datasets) == 1:
        link_type = "dedupe_only"
    elif set(duplicate_free) == set(names):
        link_type = "link_only"
    else:
        link_type = "link_and_dedupe"
    job: dict[str, Any] = {
        "kind": kind,
        "columns": list(columns),
        "link_type": link_type,
        "duplicate_free": list(duplicate_free),
        "datasets": [
            {"name": name, "rows": [list(row) for row in rows]} for name, rows in datasets
        ],
    }
    completed = subprocess.run(
        [str(ensure_splink_python()), "-c", _SNIPPET],
        input=json.dumps(job).encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"Splink failed with exit code {completed.returncode}:\n"
            + completed.stderr.decode(errors="replace")[-4000:]
        )
    answer = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    label = np.array(answer["clusters"], dtype=np.int64)
    sizes = np.cumsum([0, *(len(rows) for _, rows in datasets)])
    return SplinkResult(
        clusters=[label[sizes[i] : sizes[i + 1]] for i in range(len(datasets))],
        pair_left=np.array(answer["left"], dtype=np.int64),
        pair_right=np.array(answer["right"], dtype=np.int64),
        seconds=float(answer["seconds"]),
    )


if __name__ == "__main__":
    python = ensure_splink_python()
    print(python)
    subprocess.run([str(python), "-c", "import splink; print('splink', splink.__version__)"])
