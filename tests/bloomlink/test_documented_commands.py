"""Every `bloomlink` command line in the walkthroughs (README.md, docs/spine.md,
docs/your-own-data.md) names a command, action and flags the CLI has.

The walkthroughs elide connection flags with `...` and mark optional ones with `[...]`, so
a missing required argument is tolerated here; an unknown command, action or flag is not
(docs/spine.md once said `project run` where a person follows the run with `project status
--wait`, and fed `schema check --json` output to `--schema`). docs/your-own-data.md is also
run literally by tests/integration/test_worked_example.py.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from bloomlink.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGHS = ("README.md", "docs/spine.md", "docs/your-own-data.md")
# argparse's words for a command line naming something the CLI does not have.
UNKNOWN = ("unrecognized arguments", "invalid choice")


def shell_commands(text: str) -> list[str]:
    """`bloomlink ...` lines of the shell blocks (fenced ```sh, or indented four spaces),
    continuation lines joined, comments, `[optional]` parts and `...` dropped."""
    commands = []
    in_fence = False
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            in_fence = line.strip() == "```sh"
            continue
        if not (in_fence or line.startswith("    ")):
            continue
        command = line.strip().split(" #", 1)[0]
        for part in command.split(";"):
            part = part.strip()
            if not part.startswith("bloomlink "):
                continue
            part = re.sub(r"\[[^\]]*\]", "", part).replace("...", "")
            commands.append(part.split(" > ", 1)[0].removesuffix(" &").strip())
    return commands


@pytest.mark.parametrize("document", WALKTHROUGHS)
def test_walkthrough_commands_name_what_the_cli_has(document: str) -> None:
    commands = shell_commands((ROOT / document).read_text(encoding="utf-8"))
    assert len(commands) >= 5, document  # the extraction found the walkthrough
    wrong = []
    for command in commands:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
            build_parser().parse_args(shlex.split(command)[1:])
        if any(word in stderr.getvalue() for word in UNKNOWN):
            wrong.append(f"{command}: {stderr.getvalue().strip().splitlines()[-1]}")
    assert not wrong, "\n".join(wrong)


def test_the_spine_walkthrough_uses_a_schema_file_and_follows_the_run() -> None:
    commands = shell_commands((ROOT / "docs/spine.md").read_text(encoding="utf-8"))
    schemas = {
        command.split("--schema ", 1)[1].split()[0]
        for command in commands
        if "--schema " in command
    }
    assert schemas == {"schema.toml"}  # made by the walkthrough's own `schema init`
    assert "bloomlink schema init --out schema.toml" in commands
    assert any(
        command.startswith("bloomlink project status release-1 --wait") for command in commands
    )
