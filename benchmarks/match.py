"""Matching engine benchmark: the Dice kernels against anonlink and against a hand-written C
limit, on this CPU's own kernel path and on the AVX2 path as an AVX2-only CPU would compile
it; then LSH blocking pair completeness / reduction ratio on planted noisy matches.

    .venv/bin/python benchmarks/match.py [--size 20000] [--reps 5] [--threshold 0.8]

What runs:

* **ours**: ``candidate_pairs`` on one worker thread, on the path this CPU gets
  (``kernel_path()``), and again in subprocesses compiled as an AVX2-only CPU would
  (``NUMBA_CPU_NAME=znver3`` with only the x86-64-v3 features: no AVX-512, no GFNI) and as
  a CPU without AVX2 would (``westmere``, x86-64-v2: the ``popcnt`` path);
* **the C limit**: ``benchmarks/dice_limit.c`` compiled now with the system gcc into a
  temporary directory (``-march=native`` beside the native path, ``-march=x86-64-v3
  -mtune=znver3`` beside the AVX2 one, ``-march=x86-64-v2`` beside the POPCNT one): a
  scalar POPCNT kernel, an AVX2 VPSHUFB kernel, an AVX2 Harley-Seal kernel
  and, where the CPU has it, an AVX-512 VPOPCNTQ kernel, all doing the same work as ours
  (same pairs, same half-way bound). The limit of a path is its fastest C kernel;
* **anonlink** 0.15 ``dice_coefficient_accelerated`` from the peers venv (benchmarks/peers.py).

Every rate is pairs per CPU-second of the process doing the work (``time.process_time``):
on a shared machine a thread's CPU time is what it was given, so per-thread ratios stay
steady while wall time swings with the neighbours; wall-clock rates are printed beside
them, with the load average. Two-thread figures are wall-clock. Each figure is the median
of ``--reps`` runs (the minimum time is printed too), ours, C and anonlink interleaved.
Every kernel's pairs are checked against ours; a mismatch is printed and fails the run.

Prints tables, then ONE JSON line of key figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import this_machine  # noqa: E402
from peers import run_in_peers  # noqa: E402

from linkage_unit.blocking import BlockingIndex, pair_completeness  # noqa: E402
from linkage_unit.kernels import (  # noqa: E402
    X86_64_V2_FEATURES,
    X86_64_V3_FEATURES,
    KernelPath,
    cpu_features,
    kernel_path,
)
from linkage_unit.similarity import candidate_pairs, popcounts, required_shared  # noqa: E402

C_SOURCE = ROOT / "benchmarks" / "dice_limit.c"
C_KERNELS = ("dice_scalar", "dice_avx2", "dice_avx2_hs", "dice_avx512")
FORCED = {
    KernelPath.AVX2: ("znver3", "x86-64-v3", X86_64_V3_FEATURES),
    KernelPath.POPCNT: ("westmere", "x86-64-v2", X86_64_V2_FEATURES),
}
"""Paths also run as a CPU that has nothing more would compile them: (CPU numba and gcc tune
for, gcc's -march level, the LLVM features of that level). AVX2 is the x86-64-v3 set (AVX2,
BMI2, FMA, POPCNT; no AVX-512, no GFNI) scheduled for AMD Zen 3, issue 15's AVX2 machine;
POPCNT is x86-64-v2 (SSE4.2, POPCNT), scheduled for Westmere."""

ANONLINK_SNIPPET = r"""
import json, sys, time
import numpy as np
from bitarray import bitarray
from anonlink.similarities import dice_coefficient_accelerated
data = sys.stdin.buffer.read()
n, m, words, reps = (int(x) for x in np.frombuffer(data[:32], np.int64))
threshold = float(np.frombuffer(data[32:40], np.float64)[0])
raw = np.frombuffer(data[40:], np.uint8)
def to_bitarrays(block):
    out = []
    for row in block:
        b = bitarray(endian='little'); b.frombytes(row.tobytes()); out.append(b)
    return out
left = to_bitarrays(raw[: n * words * 8].reshape(n, words * 8))
right = to_bitarrays(raw[n * words * 8 :].reshape(m, words * 8))
cpu, wall = [], []
for _ in range(reps):
    c, w = time.process_time(), time.perf_counter()
    result = dice_coefficient_accelerated((left, right), threshold)
    cpu.append(time.process_time() - c); wall.append(time.perf_counter() - w)
print(json.dumps({"cpu": cpu, "wall": wall, "found": len(result[0])}))
"""


def planted(generator: np.random.Generator, size: int, density: float) -> tuple[np.ndarray, ...]:
    """Two sides of random CLKs; the first half of the right side are noisy copies of the
    left (Dice ~0.75-1.0), so about size / 2 pairs pass 0.8."""

    def random_clks(records: int) -> np.ndarray:
        bits = generator.random((records, 1024)) < density
        return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).reshape(records, 16)

    left = random_clks(size)
    right = random_clks(size)
    half = size // 2
    flips = generator.uniform(0.0, 0.12, half)
    mask = generator.random((half, 1024)) < flips[:, None] * density
    noise = np.packbits(mask, axis=1, bitorder="little").view(np.uint64).reshape(half, 16)
    right[:half] = left[:half] ^ noise
    return left, right


def forced_environment(cpu: str, level: frozenset[str]) -> dict[str, str]:
    """The environment that makes numba compile for ``cpu`` with only ``level``'s features."""
    names = sorted(cpu_features() | level)
    features = ",".join(("+" if name in level else "-") + name for name in names)
    return dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features)


def build_c_limit(directory: Path, march: str, tune: str | None = None) -> Path | None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    library = directory / f"dice_limit_{march}.so"
    command = [compiler, "-O3", f"-march={march}", "-shared", "-fPIC", str(C_SOURCE)]
    if tune:
        command.append(f"-mtune={tune}")
    completed = subprocess.run([*command, "-o", str(library)], capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"C limit for -march={march} not built: {completed.stderr[-500:]}")
        return None
    return library


def c_kernels(library: Path) -> dict[str, Callable[..., int]]:
    loaded = ctypes.CDLL(str(library))
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    found: dict[str, Callable[..., int]] = {}
    for name in C_KERNELS:
        if hasattr(loaded, name):
            function = getattr(loaded, name)
            function.restype = integer
            function.argtypes = [pointer, integer, pointer, integer, integer, *[pointer] * 5]
            function.argtypes.append(integer)
            found[name] = function
    return found


def run_c(function: Callable[..., int], left: np.ndarray, right: np.ndarray, threshold: float):
    """One C call with the preparation ours does too: right side sorted by popcount."""
    counts = popcounts(right)
    order = np.argsort(counts, kind="stable")
    right_sorted = np.ascontiguousarray(right[order])
    right_counts = np.ascontiguousarray(counts[order])
    left_counts = popcounts(left)
    required = required_shared(threshold, 64 * left.shape[1])
    capacity = 4 * len(left) + (1 << 16)
    rows, cols = np.empty(capacity, np.int32), np.empty(capacity, np.int32)
    kept = function(
        left.ctypes.data, len(left), right_sorted.ctypes.data, len(right), left.shape[1],
        left_counts.ctypes.data, right_counts.ctypes.data, required.ctypes.data,
        rows.ctypes.data, cols.ctypes.data, capacity,
    )  # fmt: skip
    if kept < 0:
        return None
    kept = min(kept, capacity)
    return set(zip(rows[:kept].tolist(), order[cols[:kept]].tolist(), strict=True))


def timed(function: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def measure_kernels(
    size: int, reps: int, threshold: float, library: str | None, seed: int
) -> dict[str, Any]:
    """Ours on this process's kernel path and every C kernel, interleaved; seconds per run."""
    left, right = planted(np.random.default_rng(seed), size, 0.45)
    path = kernel_path()
    jobs: dict[str, Callable[[], Any]] = {
        f"ours {path}": lambda: candidate_pairs(left, right, threshold, workers=1)
    }
    if library:
        for name, function in c_kernels(Path(library)).items():
            jobs[f"C {name}"] = lambda function=function: run_c(function, left, right, threshold)
    found: dict[str, Any] = {}
    for name, job in list(jobs.items()):  # warm up (JIT, caches) and check the pairs
        result = job()
        if result is None:
            del jobs[name]
            continue
        found[name] = (
            set(zip(result.left.tolist(), result.right.tolist(), strict=True))
            if name.startswith("ours")
            else result
        )
    reference = found[f"ours {path}"]
    mismatches = [name for name, pairs in found.items() if pairs != reference]
    times: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in jobs}
    names = list(jobs)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            cpu, wall, _ = timed(jobs[name])
            times[name]["cpu"].append(cpu)
            times[name]["wall"].append(wall)
    return {
        "path": str(path),
        "pairs": size * size,
        "found": len(reference),
        "mismatches": mismatches,
        "times": times,
        "load": os.getloadavg(),
    }


def measure_in_subprocess(
    environment: dict[str, str], size: int, reps: int, threshold: float, library: str | None
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", "--size", str(size), "--reps", str(reps)]
    command += ["--threshold", str(threshold)]
    if library:
        command += ["--library", library]
    completed = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=3600, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"kernel worker failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def measure_anonlink(left: np.ndarray, right: np.ndarray, reps: int, threshold: float):
    header = np.array([len(left), len(right), left.shape[1], reps], np.int64).tobytes()
    payload = header + np.float64(threshold).tobytes() + left.tobytes() + right.tobytes()
    return run_in_peers(ANONLINK_SNIPPET, stdin_bytes=payload)


def rate(pairs: int, seconds: list[float]) -> float:
    return pairs / statistics.median(seconds)


def best_rate(pairs: int, seconds: list[float]) -> float:
    return pairs / min(seconds)


def summarise(
    measured: dict[str, Any], peer_cpu_rate: float, label: str
) -> tuple[dict[str, Any], list[str]]:
    pairs = measured["pairs"]
    ours_name = f"ours {measured['path']}"
    ours = measured["times"][ours_name]
    ours_rate = rate(pairs, ours["cpu"])
    lines = []
    limits = {
        name: rate(pairs, t["cpu"]) for name, t in measured["times"].items() if name.startswith("C")
    }
    limit_name = max(limits, key=limits.__getitem__) if limits else None
    for name, t in measured["times"].items():
        cpu_rate = rate(pairs, t["cpu"])
        share = f"{cpu_rate / limits[limit_name]:8.2f}" if limit_name else "       -"
        lines.append(
            f"{label:>8} {name:28s} {cpu_rate / 1e6:9.0f} {best_rate(pairs, t['cpu']) / 1e6:9.0f} "
            f"{rate(pairs, t['wall']) / 1e6:9.0f} {cpu_rate / peer_cpu_rate:9.2f} {share}"
        )
    summary = {
        "path": measured["path"],
        "pairs_s_1t": round(ours_rate),
        "pairs_s_1t_best": round(best_rate(pairs, ours["cpu"])),
        "ratio": round(ours_rate / peer_cpu_rate, 2),
        "c_limit": limit_name,
        "c_limit_pairs_s": round(limits[limit_name]) if limit_name else None,
        "share_of_c_limit": round(ours_rate / limits[limit_name], 3) if limit_name else None,
        "load_avg_1m": round(measured["load"][0], 2),
        "mismatches": measured["mismatches"],
    }
    return summary, lines


def blocking_table(size: int, threshold: float) -> list[dict[str, float]]:
    generator = np.random.default_rng(7)
    print(
        f"\n{'density':>8} {'exhaustive pairs':>17} {'PC':>8} {'RR':>8} {'block s':>8} {'exh s':>7}"
    )
    rows = []
    for density in (0.3, 0.45, 0.5):
        left, right = planted(generator, size, density)
        start = time.perf_counter()
        exhaustive = candidate_pairs(left, right, threshold)
        exhaustive_seconds = time.perf_counter() - start
        start = time.perf_counter()
        index = BlockingIndex(left, right, seed=1)
        blocked = index.candidate_pairs(threshold)
        blocked_seconds = time.perf_counter() - start
        completeness = pair_completeness(blocked, exhaustive)
        rows.append({"density": density, "pc": completeness, "rr": index.plan.reduction_ratio})
        print(
            f"{density:8.2f} {len(exhaustive):17d} {completeness:8.4f} "
            f"{index.plan.reduction_ratio:8.4f} {blocked_seconds:8.2f} {exhaustive_seconds:7.2f}"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=20_000, help="records per side")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--blocking-size", type=int, default=20_000)
    parser.add_argument("--skip-blocking", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seed = 2024
    if args.worker:
        print(json.dumps(measure_kernels(args.size, args.reps, args.threshold, args.library, seed)))
        return 0

    machine = this_machine()
    native = kernel_path()
    print(f"CPU: {machine.cpu}; native kernel path: {native}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    left, right = planted(np.random.default_rng(seed), args.size, 0.45)
    pairs = args.size * args.size
    failures = []
    with tempfile.TemporaryDirectory() as scratch:
        native_library = build_c_limit(Path(scratch), "native")
        peer = measure_anonlink(left, right, args.reps, args.threshold)
        library = str(native_library) if native_library else None
        measured = {"native": measure_kernels(args.size, args.reps, args.threshold, library, seed)}
        for path, (cpu_name, march, level) in FORCED.items():
            if path is native or not level <= cpu_features():
                continue
            forced_library = build_c_limit(Path(scratch), march, cpu_name)
            measured[str(path)] = measure_in_subprocess(
                forced_environment(cpu_name, level), args.size, args.reps, args.threshold,
                str(forced_library) if forced_library else None,
            )  # fmt: skip
        peer_late = measure_anonlink(left, right, args.reps, args.threshold)
    peer_cpu = peer["cpu"] + peer_late["cpu"]
    peer_rate = rate(pairs, peer_cpu)
    if peer["found"] != measured["native"]["found"]:
        failures.append(f"anonlink found {peer['found']}, ours {measured['native']['found']}")

    print(f"\n{args.size} x {args.size} ({pairs / 1e6:.0f} M pairs), threshold {args.threshold}, "
          f"median of {args.reps} (anonlink {2 * args.reps}); M pairs per CPU-second unless wall")  # fmt: skip
    print(
        f"{'':>8} {'kernel':28s} {'median':>9} {'best':>9} {'wall':>9} {'x anonl.':>9} {'x C lim.':>8}"
    )
    print(f"{'peer':>8} {'anonlink 0.15':28s} {peer_rate / 1e6:9.0f} "
          f"{best_rate(pairs, peer_cpu) / 1e6:9.0f} "
          f"{rate(pairs, peer['wall'] + peer_late['wall']) / 1e6:9.0f} {1.0:9.2f}")  # fmt: skip
    paths: dict[str, Any] = {}
    for label, result in measured.items():
        summary, lines = summarise(result, peer_rate, label)
        paths[result["path"]] = summary
        print("\n".join(lines))
        failures += [f"{label}: {name} found other pairs" for name in result["mismatches"]]

    one, two = [], []
    for _ in range(args.reps):  # wall clock, one and two threads interleaved
        one.append(timed(lambda: candidate_pairs(left, right, args.threshold, workers=1))[1])
        two.append(timed(lambda: candidate_pairs(left, right, args.threshold, workers=2))[1])
    print(f"\nours {native}, wall clock: {rate(pairs, one) / 1e6:.0f} M pairs/s on 1 thread, "
          f"{rate(pairs, two) / 1e6:.0f} M on 2 ({rate(pairs, two) / rate(pairs, one):.2f}x; "
          f"load {os.getloadavg()[0]:.2f})")  # fmt: skip
    blocking_rows = [] if args.skip_blocking else blocking_table(args.blocking_size, args.threshold)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for failure in failures:
        print(f"FAILED: {failure}")
    native_summary = paths[str(native)]
    key_figures: dict[str, Any] = {
        "bench": "match",
        "size": args.size,
        "threshold": args.threshold,
        **machine.fields(),
        "kernel_path": str(native),
        "bloomlink_pairs_s_1t": native_summary["pairs_s_1t"],
        "bloomlink_pairs_s_1t_wall": round(rate(pairs, one)),
        "bloomlink_pairs_s_2t_wall": round(rate(pairs, two)),
        "peer": "anonlink",
        "peer_pairs_s_1t": round(peer_rate),
        "ratio": native_summary["ratio"],
        "share_of_c_limit": native_summary["share_of_c_limit"],
        "paths": paths,
        "load_avg_1m_per_path": [round(result["load"][0], 2) for result in measured.values()],
    }
    if blocking_rows:
        key_figures["blocking_pc_min"] = round(min(r["pc"] for r in blocking_rows), 4)
        key_figures["blocking_rr_min"] = round(min(r["rr"] for r in blocking_rows), 4)
    print(json.dumps(key_figures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
