"""Peer tools for side-by-side benchmarks: the anonlink suite in its own virtual environment.

The anonlink suite pins numpy<2, cryptography<41 and pydantic<2, so it cannot share an
environment with bloomlink. This helper keeps it in a venv OUTSIDE the repository (default
``~/.cache/bloomlink/peers-venv``; override with ``BLOOMLINK_PEERS_VENV``), builds it on first
use, and runs snippets in it as subprocesses that print one JSON document.

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
REPOSITORY = Path(__file__).resolve().parent.parent


def peers_venv_path() -> Path:
    """Where the peer venv lives: BLOOMLINK_PEERS_VENV, else ~/.cache/bloomlink/peers-venv."""
    configured = os.environ.get("BLOOMLINK_PEERS_VENV")
    path = Path(configured) if configured else Path.home() / ".cache" / "bloomlink" / "peers-venv"
    path = path.expanduser().resolve()
    if path == REPOSITORY or REPOSITORY in path.parents:
        raise SystemExit(f"the peers venv must live outside the repository, not at {path}")
    return path


def ensure_peers_python(*, quiet: bool = False) -> Path:
    """Return the peer venv's python, creating the venv and installing the suite if missing."""
    venv = peers_venv_path()
    python = venv / "bin" / "python"
    marker = venv / ".bloomlink-peers-installed"
    if python.exists() and marker.exists():
        return python
    if not quiet:
        print(f"creating peers venv at {venv} (a minute or two)", file=sys.stderr)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable if _is_plain_python() else "python3", "-m", "venv", str(venv)], check=True
    )
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("--quiet")
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    marker.write_text(" ".join(PEER_PACKAGES) + "\n", encoding="utf-8")
    return python


def _is_plain_python() -> bool:
    # Inside a venv, sys.executable would make the peer venv inherit nothing, but prefer the
    # system python3 anyway so the peer venv does not depend on bloomlink's.
    return sys.prefix == sys.base_prefix


def run_in_peers(snippet: str, *, stdin_bytes: bytes | None = None, timeout: float = 1800) -> Any:
    """Run ``snippet`` with the peer python; it must print one JSON document as its LAST line.

    ``stdin_bytes`` is handed to the snippet on standard input (e.g. packed CLKs).
    """
    python = ensure_peers_python(quiet=True)
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
