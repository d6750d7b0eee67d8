"""Every benchmark's JSON line names the machine it was measured on (the brief: name the CPU
in every figure; sessions run on AVX2 and AVX-512 CPUs that both call themselves "AMD EPYC")."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from machine import parse_cpuinfo  # noqa: E402

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 popcnt avx avx2 bmi2 sha_ni vaes

processor\t: 1
model name\t: another CPU
"""

ZEN4_FLAGS = "popcnt avx2 avx512f avx512bw avx512_vpopcntdq gfni"


def test_the_cpu_is_named_by_family_model_and_the_kernels_simd_features() -> None:
    zen3 = parse_cpuinfo(ZEN3, cores=2)
    assert zen3.cpu == "AMD EPYC (family 25, model 1; popcnt, avx2)"
    zen4 = parse_cpuinfo(ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace(
        "fpu sse2 popcnt avx avx2 bmi2 sha_ni vaes", ZEN4_FLAGS), cores=2)  # fmt: skip
    assert zen4.simd == ("popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq")
    assert zen4.cpu != zen3.cpu
    assert parse_cpuinfo("", cores=1).cpu == "unknown CPU (family ?, model ?; no SIMD popcount)"
    fields = zen3.fields()
    assert fields["cores"] == 2 and fields["cpu_simd"] == ["popcnt", "avx2"]
    assert isinstance(fields["load_avg_1m"], float)


def test_every_benchmark_json_line_carries_the_machine() -> None:
    scripts = [path for path in sorted(BENCHMARKS.glob("*.py")) if '"bench":' in path.read_text()]
    assert len(scripts) >= 10
    missing = [path.name for path in scripts if "this_machine()" not in path.read_text()]
    assert missing == []
