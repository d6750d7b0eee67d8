"""Leak-scanner throughput: the prefix-indexed search against bytes.find per pattern.

Writes a random encoded file (records x 128 bytes) and scans it for N synthetic sensitive
strings. The naive twin is timed on a sample of patterns and scaled to all of them (running
it on every pattern would take hours at realistic sizes, which is the point).

Then the chance model on grouped files: a file of the shipped default's geometry (name,
birth, postcode groups of 128, 128 and 64 bytes) whose group encodings are drawn from pools,
as records sharing a value share a group encoding (half as many name encodings as records,
an eighth as many birth, a fortieth as many postcode). It counts the findings the scan gives,
and those a test on raw copies (the scanner before distinct contexts) would give; then the
same file with 200 of the strings written into name encodings (each into one, as a broken
encoder would), which the scan must flag.

    python benchmarks/leak_scan.py [--records 250000] [--strings 20000] [--naive-sample 100]
"""

from __future__ import annotations

import argparse
import json
import mmap
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import this_machine

import party.leak_scan as leak_scan
from party.leak_scan import find_occurrences_naive, scan_encoded_file, sensitive_patterns
from protocol.clk_file import ClkFileWriter
from protocol.clk_layout import ClkLayout, GroupLayout

# The shipped default's record after hardening (protocol/data/default_schema.toml).
DEFAULT_GEOMETRY = ClkLayout(
    groups=(
        GroupLayout(name="name", bits=1024),
        GroupLayout(name="birth", bits=1024),
        GroupLayout(name="postcode", bits=512),
    )
)
POOL_DIVISORS = (2, 8, 40)  # records per distinct name, birth, postcode encoding


def synthetic_strings(count: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(4, 12, size=count)
    return ["".join(rng.choice(letters, size=int(length))).title() for length in lengths]


def write_grouped(
    path: Path, records: int, rng: np.random.Generator, leaks: list[str] | None = None
) -> None:
    """Records whose group encodings come from pools; ``leaks`` written into name encodings."""
    starts = [8 * word for word in DEFAULT_GEOMETRY.word_offsets()]
    pools = [
        rng.integers(0, 256, size=(max(records // divisor, 1), high - low), dtype=np.uint8)
        for divisor, low, high in zip(POOL_DIVISORS, starts, starts[1:], strict=False)
    ]
    for number, value in enumerate(leaks or []):
        data = np.frombuffer(value.lower().encode(), dtype=np.uint8)
        pools[0][number, 10 : 10 + data.size] = data
    with ClkFileWriter(
        path,
        project_id="bench",
        schema_fingerprint=bytes(32),
        kcv=bytes(16),
        clk_bits=DEFAULT_GEOMETRY.total_bits,
        layout=DEFAULT_GEOMETRY,
    ) as writer:
        for start in range(0, records, 50_000):
            count = min(50_000, records - start)
            picks = [rng.integers(0, pool.shape[0], size=count) for pool in pools]
            if leaks and start == 0:
                picks[0][: len(leaks)] = np.arange(len(leaks))  # every leaked value is used
            writer.write(np.hstack([pool[pick] for pool, pick in zip(pools, picks, strict=True)]))


def copies_findings(path: Path, strings: list[str], false_alarm_rate: float = 1e-6) -> int:
    """Patterns a Poisson test on raw copies would flag (the scanner before this change)."""
    patterns, _ = sensitive_patterns(strings)
    data = path.read_bytes()
    frequencies = leak_scan._byte_frequencies(data)
    threshold = false_alarm_rate / max(len(patterns), 1)
    return sum(
        1
        for number, offsets in leak_scan.find_occurrences(data, patterns).items()
        if leak_scan._poisson_tail(
            len(offsets),
            leak_scan._expected_by_chance(patterns[number].data, frequencies, len(data)),
        )
        < threshold
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=250_000)
    parser.add_argument("--strings", type=int, default=20_000)
    parser.add_argument("--naive-sample", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(secrets.randbits(64))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.clk"
        with ClkFileWriter(
            path, project_id="bench", schema_fingerprint=bytes(32), kcv=bytes(16), clk_bits=1024
        ) as writer:
            for start in range(0, args.records, 50_000):
                count = min(50_000, args.records - start)
                writer.write(rng.integers(0, 256, size=(count, 128), dtype=np.uint8))
        strings = synthetic_strings(args.strings, rng)
        size = path.stat().st_size

        started = time.perf_counter()
        patterns, _ = sensitive_patterns(strings)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = scan_encoded_file(path, strings)
        fast_seconds = time.perf_counter() - started

        sample = patterns[: args.naive_sample]
        with (
            path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer,
        ):
            started = time.perf_counter()
            find_occurrences_naive(buffer, sample)  # type: ignore[arg-type]
            naive_sample_seconds = time.perf_counter() - started
        naive_seconds = naive_sample_seconds * len(patterns) / max(len(sample), 1)

        grouped = Path(directory) / "grouped.clk"
        write_grouped(grouped, args.records, rng)
        started = time.perf_counter()
        grouped_report = scan_encoded_file(grouped, strings)
        grouped_seconds = time.perf_counter() - started
        grouped_copies = copies_findings(grouped, strings)
        leaked = [value for value in strings if len(value) >= 5][:200]
        write_grouped(grouped, args.records, rng, leaks=leaked)
        leaked_kinds = sorted(
            {finding.kind for finding in scan_encoded_file(grouped, strings).findings}
        )

    mb = size / 1e6
    print(f"{'file':<28}{mb:>10.1f} MB ({args.records} CLKs of 1024 bits)")
    print(f"{'sensitive strings':<28}{args.strings:>10}")
    print(f"{'byte patterns':<28}{len(patterns):>10} (built in {build_seconds:.2f} s)")
    print(f"{'indexed scan (whole run)':<28}{fast_seconds:>10.2f} s  {mb / fast_seconds:8.1f} MB/s")
    print(
        f"{'bytes.find x patterns':<28}{naive_seconds:>10.1f} s  "
        f"(timed on {len(sample)} patterns, scaled)"
    )
    print(f"{'findings on random data':<28}{len(report.findings):>10}")
    print(
        f"{'grouped, shared encodings':<28}{len(grouped_report.findings):>10} findings "
        f"({grouped_seconds:.2f} s); a test on raw copies: {grouped_copies}"
    )
    print(f"{'grouped, 200 values leaked':<28}{', '.join(leaked_kinds) or 'NOT FOUND':>10}")
    print(
        json.dumps(
            {
                "bench": "leak_scan",
                **this_machine().fields(),
                "file_mb": round(mb, 1),
                "strings": args.strings,
                "patterns": len(patterns),
                "bloomlink_s": round(fast_seconds, 3),
                "bloomlink_mb_s": round(mb / fast_seconds, 1),
                "peer": "bytes.find per pattern",
                "peer_s": round(naive_seconds, 1),
                "ratio": round(naive_seconds / fast_seconds, 1),
                "false_findings": len(report.findings),
                "grouped_false_findings": len(grouped_report.findings),
                "grouped_copies_findings": grouped_copies,
                "grouped_leak_found": bool(leaked_kinds),
                "grouped_leak_many_strings": "many-strings" in leaked_kinds,
            }
        )
    )


if __name__ == "__main__":
    main()
