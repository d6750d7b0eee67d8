"""The linkage unit's allocator setting: large temporaries freed go back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from linkage_unit.allocator import MMAP_THRESHOLD_BYTES, pin_mmap_threshold

_RETAINED = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from linkage_unit.allocator import pin_mmap_threshold

    def rss_mib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    assert pin_mmap_threshold(int(sys.argv[1]) << 20)
    before = rss_mib()
    arrays = [np.ones(12 << 20, np.uint8) for _ in range(20)]
    last = arrays[-1]  # held: a heap cannot shrink past it
    del arrays
    print(rss_mib() - before)
    """
)


def _retained_mib(threshold_mib: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _RETAINED, str(threshold_mib)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def test_pinned_threshold_returns_freed_temporaries_a_higher_one_keeps() -> None:
    if platform.libc_ver()[0] != "glibc":
        # No mallopt to pin: the allocator is left alone and says so.
        assert pin_mmap_threshold() is False
        return
    # 19 freed 12 MiB temporaries: kept in the heap under a 16 MiB threshold (where the
    # default one rises after the first larger block freed), returned under the 8 MiB the
    # linkage unit pins.
    assert MMAP_THRESHOLD_BYTES == 8 << 20
    kept = _retained_mib(16)
    returned = _retained_mib(8)
    assert kept > 150 and returned < 60, (kept, returned)


def test_the_threshold_is_bounded() -> None:
    with pytest.raises(ValueError, match="mmap threshold"):
        pin_mmap_threshold(0)
    with pytest.raises(ValueError, match="mmap threshold"):
        pin_mmap_threshold(64 << 20)
