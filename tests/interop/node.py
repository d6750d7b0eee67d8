"""Running the Node.js conformance client from the tests: find Node, install its packages
from the lockfile (``npm ci``), run a script.

Node 20+ and npm are part of the machine image CI runs on; without them the interop tests
fail with this module's message (a skipped conformance check would be a hidden failure).
``npm ci`` runs once per lockfile: a stamp in node_modules records the lockfile's digest, so
later runs (and offline ones) reuse the installed packages.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parent
LOCKFILE = INTEROP / "package-lock.json"
STAMP = INTEROP / "node_modules" / ".bloomlink-lockfile-sha256"
MIN_NODE_MAJOR = 20


def node_executable() -> str:
    """The ``node`` binary, version 20 or later, or a test failure saying what to install."""
    found = shutil.which("node")
    if found is None:
        pytest.fail(
            "Node.js is not installed (no `node` on PATH): the protocol conformance tests "
            f"need Node.js {MIN_NODE_MAJOR}+ and npm to run the second client in tests/interop. "
            "Install them (e.g. apt-get install nodejs npm) and run make test again.",
            pytrace=False,
        )
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    match = re.match(r"v(\d+)\.", version.stdout.strip())
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(
            f"Node.js {version.stdout.strip()} is too old: tests/interop needs "
            f"{MIN_NODE_MAJOR} or later.",
            pytrace=False,
        )
    return found


def install_packages() -> None:
    """``npm ci`` in tests/interop unless node_modules already matches the lockfile."""
    node_executable()
    wanted = hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is not installed: tests/interop installs its packages with `npm ci` from "
            "package-lock.json. Install npm (it ships with Node.js) and run make test again.",
            pytrace=False,
        )
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"]
    done = subprocess.run(
        command,
        cwd=INTEROP,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )
    if done.returncode != 0:
        pytest.fail(
            f"`npm ci` in tests/interop failed (exit {done.returncode}); it needs the npm "
            f"registry or a warm npm cache.\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}",
            pytrace=False,
        )
    STAMP.write_text(wanted + "\n")


def run_script(*arguments: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """Run ``node <arguments>`` in tests/interop; the caller checks the exit status."""
    return subprocess.run(
        [node_executable(), *arguments],
        cwd=INTEROP,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
