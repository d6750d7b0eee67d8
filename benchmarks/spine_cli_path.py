"""The spine done-when path of tests/integration/test_spine_cli.py, in process, over many secrets.

The integration test runs issue 14's path once, with the CLI against a real LU, in about a
minute. This replays the same path with the engine alone (``link_into_spine``; the same synth
data, department mappings, default schema, project settings and key context), so tens of
linkage secrets take minutes and a rare outcome shows up: release 1 (MoJ + DfE) into an empty
spine; release 2, the DfE-layout extract sent by MoJ (deduplicated alone); HMPPS joins
(deduplicated alone); MoJ's release-1 extract again, identical (deduplicated alone). Per
secret (the SHA-256 of ``--secret-prefix`` and the index; the LU's blocking seed from the
SHA-256 of ``b`` and the index):

* the identical re-extract's records keeping their release-1 MoJ key, with the crosswalk;
* release 2's returning people keeping their MoJ key (the test's >= 98 % bar);
* keys held by two or more true people over every run, and the run that first gave each a
  second person (per_party keys: a false link of release 1 can first show in release 2);
* merges, splits and clusters held apart per run.

    nice .venv/bin/python benchmarks/spine_cli_path.py --secrets 30
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import this_machine  # noqa: E402
from refresh import (  # noqa: E402
    SHARING_CAUSES,
    _keys_by_row,
    _normalised,
    keys_joining_people,
    sharing_causes,
)

from bloomlink.synth import SynthConfig, generate  # noqa: E402
from linkage_unit.matching import MatchSettings  # noqa: E402
from linkage_unit.spine import (  # noqa: E402
    DEFAULT_ATTACH_PROBABILITY,
    SpineSettings,
    SpineState,
    SpineUpload,
    link_into_spine,
)
from protocol.encoding import ClkEncoder  # noqa: E402
from protocol.labels import spine_key_context  # noqa: E402
from protocol.schema import default_schema  # noqa: E402
from protocol.secret import LinkageSecret  # noqa: E402

# The test's runs: (project, party -> the synth department whose extract it sends).
RUNS = (
    ("release-1", {"moj": "moj", "dfe": "dfe"}),
    ("release-2", {"moj": "dfe"}),
    ("hmpps-joins", {"hmpps": "hmpps"}),
    ("re-extract", {"moj": "moj"}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=30)
    parser.add_argument("--first", type=int, default=0, help="index of the first secret")
    parser.add_argument("--secret-prefix", default="h")
    parser.add_argument("--records", type=int, default=300, help="the test's synth --records")
    parser.add_argument("--difficulty", default="low")
    parser.add_argument("--seed", type=int, default=14, help="the test's synth --seed")
    parser.add_argument(
        "--attach-probability",
        type=float,
        default=DEFAULT_ATTACH_PROBABILITY,
        help="the spine's attach probability (spine create --attach-probability); 0.5, the "
        "link cut, attaches as before it existed",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    synth = generate(
        SynthConfig(
            departments=("moj", "dfe", "hmpps"),
            records=args.records,
            difficulty=args.difficulty,
            seed=args.seed,
        )
    )
    schema = default_schema()
    normalised = {d.name: _normalised(d, schema) for d in synth.departments}
    people = {d.name: d.people for d in synth.departments}
    fingerprint = schema.fingerprint.hex()
    rows = []
    print(
        f"{'secret':<8}{'re-extract kept':>16}{'release 2 kept':>16}{'shared keys':>13}  first shared in"
    )
    for index in range(args.first, args.first + args.secrets):
        label = f"{args.secret_prefix}{index}"
        digest = hashlib.sha256(label.encode()).digest()
        encoder = ClkEncoder(schema, LinkageSecret(digest), project_id=spine_key_context("people"))
        clks = {name: encoder.encode_many(values) for name, values in normalised.items()}
        kcv = encoder.kcv.hex()
        state = SpineState(
            settings=SpineSettings(
                name="people",
                parties=("moj", "dfe", "hmpps"),
                schema_fingerprint=fingerprint,
                attach_probability=args.attach_probability,
            )
        )
        blocking = hashlib.sha256(f"b{index}".encode()).digest()
        settings = MatchSettings(blocking_seed=int.from_bytes(blocking[:16], "little"))
        issued: list[tuple[str, str, list[str]]] = []  # (run, department, keys by row)
        events: dict[str, dict[str, int]] = {}
        logged: list[
            tuple[SpineState, SpineState, list[tuple[str, npt.NDArray[np.int64], list[str]]]]
        ] = []
        release_1_joined = 0
        for project, sends in RUNS:
            run_settings = (
                settings if len(sends) > 1 else replace(settings, deduplicated=frozenset(sends))
            )
            uploads = [
                SpineUpload(party=party, schema_fingerprint=fingerprint, kcv=kcv, clks=clks[dept])
                for party, dept in sends.items()
            ]
            result = link_into_spine(
                state, uploads, run_settings, run_id=project, project_id=project,
                layout=schema.layout,
            )  # fmt: skip
            logged.append(
                (state, result.state,
                 [(party, people[dept], _keys_by_row(result.keys[party]))
                  for party, dept in sends.items()])
            )  # fmt: skip
            if project == "release-1":
                release_1_joined = keys_joining_people(
                    result.state, np.concatenate([people[dept] for dept in sends.values()])
                )
            state = result.state
            events[project] = {
                "merges": len(result.merges),
                "splits": len(result.splits),
                "held_apart": len(result.held_apart),
            }
            for party, dept in sends.items():
                issued.append((project, dept, _keys_by_row(result.keys[party])))
        crosswalk = dict(state.crosswalk().rows)
        first, again = issued[0][2], issued[4][2]
        kept_again = sum(
            crosswalk.get(one, one) == two for one, two in zip(first, again, strict=True)
        )
        key_one = dict(zip(people["moj"].tolist(), first, strict=True))
        key_two = dict(zip(people["dfe"].tolist(), issued[2][2], strict=True))
        returning = sorted(set(key_one) & set(key_two))
        kept_two = sum(key_one[person] == key_two[person] for person in returning)
        owners: dict[str, set[int]] = defaultdict(set)
        shared_in: dict[str, str] = {}
        for project, dept, keys in issued:
            for key, person in zip(keys, people[dept].tolist(), strict=True):
                owners[key].add(person)
                if len(owners[key]) > 1:
                    shared_in.setdefault(key, project)
        where = Counter(shared_in.values())
        # The done-when's own criterion: MoJ keys held by two or more true people of MoJ's
        # uploads (release 2 sends the DfE-layout extract as MoJ), by cause.
        moj_causes = sharing_causes(logged, "moj", "moj")
        row = {
            "secret": label,
            "reextract_kept": kept_again,
            "reextract_records": len(first),
            "release_2_kept": kept_two,
            "release_2_returning": len(returning),
            "shared_keys": len(shared_in),
            "shared_first_in": dict(where),
            "moj_keys_shared": sum(moj_causes.values()),
            "moj_keys_shared_by_cause": moj_causes,
            "release_1_keys_joining_people": release_1_joined,
            "events": events,
        }
        rows.append(row)
        print(
            f"{label:<8}{f'{kept_again}/{len(first)}':>16}{f'{kept_two}/{len(returning)}':>16}"
            f"{len(shared_in):>13}  {dict(where) or '-'}; MoJ keys of two MoJ people "
            f"{sum(moj_causes.values())} "
            f"{ {cause: count for cause, count in moj_causes.items() if count} or '' }; "
            f"release-1 keys joining two people {release_1_joined}"
        )
    full = sum(row["reextract_kept"] == row["reextract_records"] for row in rows)
    lost = sorted(
        row["reextract_kept"] for row in rows if row["reextract_kept"] < row["reextract_records"]
    )
    where_all: Counter[str] = Counter()
    for row in rows:
        where_all.update(row["shared_first_in"])
    machine = this_machine().fields()
    print(
        f"CPU: {machine['cpu']}, {machine['cores']} cores; load average at the end: "
        f"{machine['load_avg_1m']:.2f}; {time.perf_counter() - started:.0f} s"
    )
    print(
        f"identical re-extract: every key kept under {full} of {len(rows)} secrets"
        + (f"; the others kept {', '.join(map(str, lost))}" if lost else "")
        + f"; keys held by two true people: {sum(row['shared_keys'] for row in rows)} under "
        f"{sum(1 for row in rows if row['shared_keys'])} secrets, first shared in {dict(where_all)}"
    )
    moj_all = {
        cause: sum(row["moj_keys_shared_by_cause"][cause] for row in rows)
        for cause in SHARING_CAUSES
    }
    print(
        f"MoJ keys held by two or more true MoJ people: {sum(moj_all.values())} under "
        f"{sum(1 for row in rows if row['moj_keys_shared'])} secrets "
        f"({ {cause: count for cause, count in moj_all.items() if count} }); release-1 keys "
        f"joining a MoJ and a DfE record of two people: "
        f"{sum(int(row['release_1_keys_joining_people']) for row in rows)}"
    )
    print(
        json.dumps(
            {
                "bench": "spine_cli_path",
                "attach_probability": args.attach_probability,
                "moj_keys_shared": sum(moj_all.values()),
                "moj_keys_shared_by_cause": moj_all,
                "secrets": len(rows),
                "records": args.records,
                "difficulty": args.difficulty,
                "reextract_all_kept": full,
                "reextract_kept_otherwise": lost,
                "release_2_keep_min": min(
                    row["release_2_kept"] / row["release_2_returning"] for row in rows
                ),
                "shared_keys": sum(row["shared_keys"] for row in rows),
                "secrets_with_shared_keys": sum(1 for row in rows if row["shared_keys"]),
                "shared_first_in": dict(where_all),
                "held_apart": sum(
                    run["held_apart"] for row in rows for run in row["events"].values()
                ),
                **machine,
            }
        )
    )


if __name__ == "__main__":
    main()
