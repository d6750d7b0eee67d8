"""What commands show (not a command itself): ``--json``, progress bars and log options.

Every command that reports something takes ``--json``: it then prints exactly one JSON object
on stdout (sorted keys, one line) and no text, so a script can parse it; errors still go to
stderr as one line with the documented exit code. Progress goes to stderr as a bar with a
total, a percentage and an ETA (tqdm), and only when stderr is a terminal: a log or a CI job
gets the one-line summary and nothing else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from protocol.errors import ConfigurationError

__all__ = [
    "JsonLogFormatter",
    "add_json_flag",
    "add_log_arguments",
    "configure_logging",
    "emit",
    "progress_bar",
]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout instead of the text summary (for scripts)",
    )


def emit(args: argparse.Namespace, record: Mapping[str, Any], lines: Iterable[str]) -> None:
    """Print ``record`` as one JSON line (``--json``) or the text ``lines``."""
    if getattr(args, "json", False):
        print(json.dumps(record, sort_keys=True, default=str), flush=True)
    else:
        for line in lines:
            print(line, flush=True)


def progress_bar(
    description: str,
    *,
    total: float | None,
    unit: str = "it",
    file: IO[str] | None = None,
    enabled: bool | None = None,
) -> Any:
    """A tqdm bar on stderr; off unless the stream is a terminal (or ``enabled`` says so)."""
    stream = file or sys.stderr
    if enabled is None:
        enabled = stream.isatty()
    size = shutil.get_terminal_size(fallback=(100, 24))
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        file=stream,
        disable=not enabled,
        leave=True,
        # A terminal that reports no size (some multiplexers, `script`) gets 100 x 24.
        ncols=size.columns,
        nrows=size.lines,
        mininterval=0.2,
    )


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log record: time (UTC), level, logger, message (and the
    exception's type and traceback when one is logged). Messages carry counts and ids only."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, sort_keys=True)


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("BLOOMLINK_LOG_FORMAT", "text"),
        help="log lines as text (default) or one JSON object each (env BLOOMLINK_LOG_FORMAT)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=os.environ.get("BLOOMLINK_LOG_FILE"),
        help="append logs to this file (mode 0640) instead of stderr (env BLOOMLINK_LOG_FILE)",
    )


class _Ours:
    """Marks the handler ``configure_logging`` installed (replaced, not stacked, on a re-run)."""


class _OurStreamHandler(_Ours, logging.StreamHandler):  # type: ignore[type-arg]
    pass


class _OurFileHandler(_Ours, logging.FileHandler):
    pass


def configure_logging(*, verbose: bool, log_format: str, log_file: Path | None) -> None:
    """Route the root logger to stderr or ``log_file``, as text or JSON lines.

    Like ``logging.basicConfig``, plain text to stderr leaves a logger that already has
    handlers (an embedding program's, pytest's) alone apart from the level.
    """
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    ours = [old for old in root.handlers if isinstance(old, _Ours)]
    if log_file is None and log_format == "text" and len(root.handlers) > len(ours):
        return
    handler: logging.Handler
    if log_file is not None:
        try:
            # Created owner-writable, group-readable (logs carry ids and counts, no values).
            os.close(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
            handler = _OurFileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"cannot open log file {log_file}: {error.strerror}") from None
    else:
        handler = _OurStreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for old in ours:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
