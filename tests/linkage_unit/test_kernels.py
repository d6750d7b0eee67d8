"""Kernel dispatch: which path a CPU gets, and the AVX2, POPCNT and generic paths compiled as
they would be on CPUs without AVX-512, without AVX2, or without POPCNT, checked against the
slow reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linkage_unit.kernels import (
    X86_64_V2_FEATURES,
    X86_64_V3_FEATURES,
    KernelPath,
    cpu_features,
    kernel_path,
    supported_paths,
)
from linkage_unit.similarity import reference_best_scores, reference_candidate_pairs
from tests.strategies import noisy_copies, random_clks

ROOT = Path(__file__).resolve().parents[2]

AVX512_FEATURES = frozenset({"popcnt", "avx", "avx2", "avx512f", "avx512bw", "avx512vpopcntdq"})
AVX2_FEATURES = frozenset({"popcnt", "avx", "avx2", "bmi2"})


def test_each_cpu_family_gets_its_path() -> None:
    x86 = "x86_64"
    assert kernel_path(AVX512_FEATURES, machine=x86) is KernelPath.AVX512_VPOPCNTDQ
    assert supported_paths(AVX512_FEATURES, machine=x86) == tuple(KernelPath)
    assert kernel_path(AVX2_FEATURES, machine=x86) is KernelPath.AVX2
    # AVX-512 without the vector popcount (Skylake-X) takes the AVX2 path.
    skylake = AVX2_FEATURES | {"avx512f", "avx512bw"}
    assert kernel_path(skylake, machine=x86) is KernelPath.AVX2
    westmere = frozenset({"popcnt", "sse4.2"})
    assert supported_paths(westmere, machine=x86) == (KernelPath.POPCNT, KernelPath.GENERIC)
    assert supported_paths(frozenset({"sse2"}), machine=x86) == (KernelPath.GENERIC,)
    # The AVX2 instructions are x86 only, whatever a feature string says.
    assert supported_paths(AVX512_FEATURES, machine="aarch64") == (KernelPath.GENERIC,)


def test_this_machine_reports_the_path_its_features_give() -> None:
    assert kernel_path() is supported_paths()[0]
    assert kernel_path() is kernel_path(cpu_features())
    assert KernelPath.GENERIC in supported_paths()


_FORCED_RUN = r"""
import json, sys
import numpy as np
from linkage_unit.kernels import KernelPath, kernel_path, supported_paths
from linkage_unit.similarity import best_scores, candidate_pairs, candidate_pairs_within
from protocol.errors import MatchingError

data = np.load(sys.argv[1])
left, right = data["left"], data["right"]
out = {"path": str(kernel_path()), "supported": [str(p) for p in supported_paths()]}
for measure in ("dice", "hamming"):
    found = candidate_pairs(left, right, 0.7, measure=measure, workers=2)
    out[measure] = [found.left.tolist(), found.right.tolist(), found.scores.tolist()]
within = candidate_pairs_within(right, 0.7)
out["within"] = [within.left.tolist(), within.right.tolist()]
out["best"] = best_scores(left, right).tolist()
try:
    candidate_pairs(left, right, 0.7, path=KernelPath.AVX512_VPOPCNTDQ)
    out["refused"] = False
except MatchingError:
    out["refused"] = True
print(json.dumps(out))
"""


def _only(level: frozenset[str]) -> str:
    # One x86-64 level and nothing more (every other feature this CPU has, AVX-512 and GFNI
    # included, switched off): the code a CPU of that level compiles.
    features = sorted(cpu_features() | level)
    return ",".join(("+" if name in level else "-") + name for name in features)


_FORCED = {
    "znver3": (X86_64_V3_FEATURES, KernelPath.AVX2),
    "westmere": (X86_64_V2_FEATURES, KernelPath.POPCNT),
    "generic": (None, KernelPath.GENERIC),
}


@pytest.mark.slow
@pytest.mark.parametrize("cpu_name", list(_FORCED))
def test_forced_cpu_runs_its_path_and_agrees_with_reference(tmp_path, cpu_name) -> None:
    level, expected = _FORCED[cpu_name]
    if level is not None and not level <= cpu_features():
        level, expected = None, KernelPath.GENERIC  # this host cannot run that level's code
    generator = np.random.default_rng(21)
    left = random_clks(generator, 45, words=16)
    right = np.concatenate(
        [random_clks(generator, 300, words=16), noisy_copies(generator, left, 0.1)]
    )
    np.savez(tmp_path / "clks.npz", left=left, right=right)
    environment = dict(os.environ, NUMBA_CPU_NAME=cpu_name if level else "generic")
    if level is not None:
        environment["NUMBA_CPU_FEATURES"] = _only(level)
    else:
        environment.pop("NUMBA_CPU_FEATURES", None)
    completed = subprocess.run(
        [sys.executable, "-c", _FORCED_RUN, str(tmp_path / "clks.npz")],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.splitlines()[-1])
    assert result["path"] == expected
    assert "avx512-vpopcntdq" not in result["supported"]
    assert result["refused"] is True
    for measure in ("dice", "hamming"):
        expected_pairs = reference_candidate_pairs(left, right, 0.7, measure=measure)
        got_left, got_right, got_scores = result[measure]
        assert got_left == expected_pairs.left.tolist()
        assert got_right == expected_pairs.right.tolist()
        np.testing.assert_array_equal(np.float32(got_scores), expected_pairs.scores)
    expected_within = reference_candidate_pairs(right, right, 0.7, within=True)
    assert result["within"] == [expected_within.left.tolist(), expected_within.right.tolist()]
    np.testing.assert_array_equal(result["best"], reference_best_scores(left, right))
    assert len(result["dice"][0]) >= 45
