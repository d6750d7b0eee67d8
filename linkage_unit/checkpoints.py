"""Checkpoints: the named moments between two durable writes, where a crash is the hardest.

Stage: storage and runs (fault injection). Each multi-step write of the linkage unit calls
its checkpoint between steps; in production the checkpoint does nothing. The crash tests
(tests/linkage_unit/test_crash_points.py) run a real linkage unit in a subprocess with a
checkpoint that SIGKILLs the process at one named step, then restart it and check that
start-up reconciliation leaves nothing half done.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

__all__ = ["Checkpoint", "Step", "no_checkpoint"]


class Step(StrEnum):
    UPLOAD_RENAMED = "upload_renamed"
    """A complete upload's payload is renamed into place; the database does not say so yet."""
    RETIREMENT_INTENDED = "retirement_intended"
    """A payload deletion is recorded as intended; the file is still there."""
    PAYLOAD_UNLINKED = "payload_unlinked"
    """A retiring payload's file is gone; its deletion is neither audited nor recorded."""
    KEYS_STORED = "keys_stored"
    """A run's keys are stored; ``run_finished`` is not logged and the run not FINISHED."""
    RUN_FINISHED_LOGGED = "run_finished_logged"
    """``run_finished`` is logged; the run is not marked FINISHED yet."""


Checkpoint = Callable[[Step], None]


def no_checkpoint(step: Step) -> None:
    """The production checkpoint: nothing happens between the steps."""
