"""The machine a benchmark figure was measured on, for every script's JSON line.

Sessions run on different CPUs (AMD EPYC Zen 3 with AVX2 one day, Zen 4 with AVX-512 the
next, both named just "AMD EPYC"), and the kernels pick their path from the SIMD features, so
a figure without the family, model and features cannot be compared with another. The machine
is also shared, so the load average goes beside the time figures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The features the Dice and encoder kernels choose between (linkage_unit/simd.py).
SIMD_FLAGS = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq")


@dataclass(frozen=True, slots=True)
class Machine:
    """What `/proc/cpuinfo` says of the first processor, and how many cores there are."""

    model_name: str
    family: str
    model: str
    simd: tuple[str, ...]
    cores: int

    @property
    def cpu(self) -> str:
        """ "AMD EPYC (family 25, model 1; avx2)": the name alone can be vague."""
        features = ", ".join(self.simd) or "no SIMD popcount"
        return f"{self.model_name} (family {self.family}, model {self.model}; {features})"

    def fields(self) -> dict[str, Any]:
        """The machine's part of a benchmark's JSON line, load average at this moment."""
        return {
            "cpu": self.cpu,
            "cpu_simd": list(self.simd),
            "cores": self.cores,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }


def parse_cpuinfo(text: str, cores: int) -> Machine:
    """The first processor's block of a `/proc/cpuinfo` text."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    return Machine(
        model_name=info.get("model name", "unknown CPU"),
        family=info.get("cpu family", "?"),
        model=info.get("model", "?"),
        simd=tuple(flag for flag in SIMD_FLAGS if flag in flags),
        cores=cores,
    )


def this_machine() -> Machine:
    """The machine this process runs on."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, os.cpu_count() or 1)
