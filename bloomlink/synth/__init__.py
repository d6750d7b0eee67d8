"""Synthetic department extracts with known truth, for the demo, tests and quality benchmarks.

Stage: test-data generation (before any party normalises or encodes).

    from bloomlink.synth import SynthConfig, generate, write
    result = generate(SynthConfig(departments=("moj", "dfe"), records=10_000,
                                  difficulty="medium", seed=7))
    write(result, "out/")   # moj.csv, dfe.csv, truth.csv, synth.json

Difficulty ``none`` gives the same values for the same person in every department (only the
layouts differ); ``low``, ``medium`` and ``hard`` add the documented corruption
(``bloomlink.synth.corruption``, docs/synth.md).
"""

from __future__ import annotations

from bloomlink.synth.corruption import (
    CORRUPTION_KINDS,
    DIFFICULTIES,
    CorruptionKind,
    CorruptionLog,
    Difficulty,
    rates_for,
)
from bloomlink.synth.generation import DepartmentExtract, SynthConfig, SynthResult, generate
from bloomlink.synth.layouts import LAYOUTS, Layout
from bloomlink.synth.population import Population
from bloomlink.synth.writer import OutputFormat, SynthFiles, write

__all__ = [
    "CORRUPTION_KINDS",
    "DIFFICULTIES",
    "LAYOUTS",
    "CorruptionKind",
    "CorruptionLog",
    "DepartmentExtract",
    "Difficulty",
    "Layout",
    "OutputFormat",
    "Population",
    "SynthConfig",
    "SynthFiles",
    "SynthResult",
    "generate",
    "rates_for",
    "write",
]
