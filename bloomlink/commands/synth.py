"""``bloomlink synth``: write department-style extracts of synthetic people with known truth.

Stage: test-data generation, for the demo, tests and quality benchmarks. See docs/synth.md.
"""

from __future__ import annotations

import argparse
import logging
import time

from bloomlink.synth import DIFFICULTIES, LAYOUTS, SynthConfig, generate, write

__all__ = ["HELP", "NAME", "add_arguments", "run"]

NAME = "synth"
HELP = "write synthetic department extracts (MoJ, DfE, HMPPS layouts) and their truth"

log = logging.getLogger("bloomlink.synth")


def _departments(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in LAYOUTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(LAYOUTS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    parser.add_argument(
        "--records", type=int, default=1000, metavar="N", help="records per department"
    )
    parser.add_argument(
        "--departments",
        type=_departments,
        default=("moj", "dfe"),
        metavar="LIST",
        help=f"comma-separated layouts, the first is the reference ({', '.join(LAYOUTS)}; "
        "default moj,dfe)",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        default=0.5,
        help="fraction of each later department's people also in the first (default 0.5)",
    )
    parser.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default="medium",
        help="corruption level; none = same values everywhere (default medium)",
    )
    parser.add_argument(
        "--repeat-rate",
        type=float,
        default=0.0,
        help="fraction of records repeating a person within a department (default 0)",
    )
    parser.add_argument(
        "--repeat-departments",
        type=_departments,
        default=None,
        metavar="LIST",
        help="only these departments repeat people; the others are duplicate-free and hold "
        "only their distinct people (default: every department repeats)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for a reproducible set (default: random)"
    )
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")


def run(args: argparse.Namespace) -> int:
    config = SynthConfig(
        departments=args.departments,
        records=args.records,
        overlap=args.overlap,
        difficulty=args.difficulty,
        repeat_rate=args.repeat_rate,
        repeat_departments=args.repeat_departments,
        seed=args.seed,
    )
    started = time.perf_counter()
    log.info(
        "generating %d records for each of %s at difficulty %s",
        config.records,
        ", ".join(config.departments),
        config.difficulty,
    )
    result = generate(config)
    files = write(result, args.out, format=args.format)
    elapsed = time.perf_counter() - started
    shared = result.summary()["per_department"]
    later = [name for name in config.departments[1:]]
    overlap = ", ".join(
        f"{name} shares {shared[name]['people_shared_with_first']:,}" for name in later
    )
    print(
        f"synth: {len(result.departments)} departments x {config.records:,} records "
        f"({', '.join(config.departments)}), {len(result.population):,} people"
        + (f", {overlap} with {config.departments[0]}" if overlap else "")
        + f", difficulty {config.difficulty}, seed {result.seed}, {elapsed:.1f}s"
        f" -> {files.extracts[0].parent} ({', '.join(p.name for p in files.extracts)}, "
        f"{files.truth.name}, {files.settings.name})"
    )
    return 0
