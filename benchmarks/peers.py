"""Peer tools for side-by-side benchmarks: the anonlink suite, and plaintext Splink, each in
its own virtual environment.

The anonlink suite pins numpy<2, cryptography<41 and pydantic<2, so it cannot share an
environment with bloomlink. This helper keeps it in a venv OUTSIDE the repository (default
``~/.cache/bloomlink/peers-venv``; override with ``BLOOMLINK_PEERS_VENV``), builds it on first
use, and runs snippets in it as subprocesses that print one JSON document. Splink 5 (the
plaintext quality bar) lives the same way in ``~/.cache/bloomlink/splink-venv``
(``BLOOMLINK_SPLINK_VENV``), run by :func:`run_in_splink`.

    python benchmarks/peers.py          # create (if missing) and print the venv's python
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PEER_PACKAGES = (
    "clkhash==0.18.3",
    "anonlink==0.15.3",
    "blocklib==0.1.11",
    "recordlinkage==0.16",
    "pandas",
)
SPLINK_PACKAGES = ("splink==5.0.0", "pandas")
REPOSITORY = Path(__file__).resolve().parent.parent


def _venv_path(variable: str, name: str) -> Path:
    configured = os.environ.get(variable)
    path = Path(configured) if configured else Path.home() / ".cache" / "bloomlink" / name
    path = path.expanduser().resolve()
    if path == REPOSITORY or REPOSITORY in path.parents:
        raise SystemExit(f"a peer venv must live outside the repository, not at {path}")
    return path


def peers_venv_path() -> Path:
    """Where the peer venv lives: BLOOMLINK_PEERS_VENV, else ~/.cache/bloomlink/peers-venv."""
    return _venv_path("BLOOMLINK_PEERS_VENV", "peers-venv")


def splink_venv_path() -> Path:
    """Where Splink lives: BLOOMLINK_SPLINK_VENV, else ~/.cache/bloomlink/splink-venv."""
    return _venv_path("BLOOMLINK_SPLINK_VENV", "splink-venv")


def _ensure(venv: Path, packages: tuple[str, ...], module: str, *, quiet: bool) -> Path:
    python = venv / "bin" / "python"
    marker = venv / ".bloomlink-peers-installed"
    if python.exists() and (
        marker.exists()
        # A venv built by hand (as the shared Splink one is) counts once its module imports.
        or subprocess.run([str(python), "-c", f"import {module}"], check=False).returncode == 0
    ):
        return python
    if not quiet:
        print(f"creating peer venv at {venv} (a minute or two)", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable if _is_plain_python() else "python3", "-m", "venv", str(venv)], check=True
    )
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    subprocess.run([*pip, *packages], check=True)
    marker.write_text(" ".join(packages) + "\n", encoding="utf-8")
    return python


def ensure_peers_python(*, quiet: bool = False) -> Path:
    """Return the peer venv's python, creating the venv and installing the suite if missing."""
    return _ensure(peers_venv_path(), PEER_PACKAGES, "anonlink", quiet=quiet)


def ensure_splink_python(*, quiet: bool = False) -> Path:
    """Return Splink's venv python, creating the venv and installing Splink 5 if missing."""
    return _ensure(splink_venv_path(), SPLINK_PACKAGES, "splink", quiet=quiet)


def _is_plain_python() -> bool:
    # Inside a venv, sys.executable would make the peer venv inherit nothing, but prefer the
    # system python3 anyway so the peer venv does not depend on bloomlink's.
    return sys.prefix == sys.base_prefix


def run_in_peers(snippet: str, *, stdin_bytes: bytes | None = None, timeout: float = 1800) -> Any:
    """Run ``snippet`` with the peer python; it must print one JSON document as its LAST line.

    ``stdin_bytes`` is handed to the snippet on standard input (e.g. packed CLKs).
    """
    return _run(ensure_peers_python(quiet=True), snippet, stdin_bytes, timeout)


def run_in_splink(snippet: str, *, stdin_bytes: bytes | None = None, timeout: float = 3600) -> Any:
    """As :func:`run_in_peers`, with Splink's python."""
    return _run(ensure_splink_python(quiet=True), snippet, stdin_bytes, timeout)


def _run(python: Path, snippet: str, stdin_bytes: bytes | None, timeout: float) -> Any:
    completed = subprocess.run(
        [str(python), "-c", snippet],
        input=stdin_bytes,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"peer snippet failed with exit code {completed.returncode}:\n"
            + completed.stderr.decode(errors="replace")[-4000:]
        )
    lines = completed.stdout.decode().strip().splitlines()
    if not lines:
        raise RuntimeError("peer snippet printed nothing")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(ensure_peers_python())
    print(
        json.dumps(
            run_in_peers(
                "import json, anonlink, clkhash, blocklib, numpy;"
                "print(json.dumps({'anonlink': anonlink.__version__ if hasattr(anonlink, '__version__') "
                "else 'present', 'numpy': numpy.__version__}))"
            )
        )
    )
