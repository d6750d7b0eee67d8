"""The protocol vectors, reproduced by the Node.js client from docs/protocol.md alone (the
Python side checks them in tests/protocol/test_canonical.py and test_protocol_vectors.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.interop.node import run_script

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _vector_count() -> int:
    canonical = json.loads((VECTORS / "canonical_json.json").read_text("utf-8"))
    protocol = json.loads((VECTORS / "protocol_vectors.json").read_text("utf-8"))
    return (
        len(canonical["canonical"])
        + len(canonical["refused"])
        + len(canonical["number_to_string"]["samples"])
        + sum(
            len(protocol[name])
            for name in (
                "settings_fingerprint",
                "manifest",
                "layout_sha256",
                "link_keys_sha256",
                "clk_file_header",
            )
        )
        # the audit log: prefixes, tags, each entry's steps, the log, refusals, a view
        + 2
        + len(protocol["audit"]["lines"])
        + 3
    )


def test_node_reproduces_every_vector() -> None:
    done = run_script("vectors.mjs")
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert len(passed) == _vector_count(), done.stdout


def test_node_fails_on_a_wrong_vector(tmp_path: Path) -> None:
    for name in ("canonical_json.json", "protocol_vectors.json"):
        shutil.copy(VECTORS / name, tmp_path / name)
    vectors = json.loads((tmp_path / "protocol_vectors.json").read_text("utf-8"))
    vectors["settings_fingerprint"][0]["fingerprint"] = "0" * 64
    (tmp_path / "protocol_vectors.json").write_text(json.dumps(vectors), "utf-8")
    done = run_script("vectors.mjs", str(tmp_path))
    assert done.returncode == 1
    assert f"FAIL settings fingerprint: {vectors['settings_fingerprint'][0]['name']}" in done.stdout


def test_node_fails_on_a_view_that_shows_a_withheld_figure(tmp_path: Path) -> None:
    """A member's view in which another party's record count is shown in place of its field
    hash no longer recomputes the entry hash: the Node verifier catches it."""
    for name in ("canonical_json.json", "protocol_vectors.json"):
        shutil.copy(VECTORS / name, tmp_path / name)
    vectors = json.loads((tmp_path / "protocol_vectors.json").read_text("utf-8"))
    view = vectors["audit"]["view"]["lines"]
    index, line = next(
        (index, line)
        for index, line in enumerate(json.loads(text) for text in view)
        if "record_count" in line.get("withheld", {})
    )
    line["details"]["record_count"] = 40
    line["field_salts"]["record_count"] = "00" * 16
    del line["withheld"]["record_count"]
    view[index] = json.dumps(line, sort_keys=True, separators=(",", ":"))
    (tmp_path / "protocol_vectors.json").write_text(json.dumps(vectors), "utf-8")
    done = run_script("vectors.mjs", str(tmp_path))
    assert done.returncode == 1
    assert "FAIL audit: a member's view" in done.stdout and "entry hash" in done.stdout
