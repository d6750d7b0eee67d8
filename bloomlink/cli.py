"""The ``bloomlink`` command line: one subcommand per module in ``bloomlink/commands``.

Each command module exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Errors print one line, ``error: <Type>: <message>``, to stderr and
return the documented exit code (``bloomlink/exit_codes.py``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

# gRPC's C core logs at INFO to stderr unless told otherwise, read once when grpc is first
# imported (below, through the commands): every server start printed the mutual-TLS
# self-check's own "Handshake failed ... PEER_DID_NOT_RETURN_A_CERTIFICATE" and client
# connections "No match found for server name". Errors still show; GRPC_VERBOSITY=INFO or
# DEBUG in the environment brings the rest back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from bloomlink import __version__  # noqa: E402
from bloomlink.commands._explain import explain_aspect  # noqa: E402
from bloomlink.commands._output import add_log_arguments, configure_logging  # noqa: E402
from bloomlink.exit_codes import EXIT_CODE_HELP, ExitCode, exit_code_for  # noqa: E402
from protocol.errors import BloomlinkError, CompatibilityError  # noqa: E402

__all__ = ["build_parser", "main"]

# Order is the order in --help: the pipeline, then operations, then tools.
COMMAND_MODULES: tuple[str, ...] = (
    "keygen",
    "schema",
    "encode",
    "scan",
    "certs",
    "serve",
    "project",
    "spine",
    "submit",
    "fetch",
    "health",
    "audit",
    "synth",
    "demo",
)


def _load_commands() -> list[object]:
    return [importlib.import_module(f"bloomlink.commands.{name}") for name in COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document every command and exit code)."""
    epilog = "exit codes:\n" + "\n".join(
        f"  {int(code):>3}  {text}" for code, text in EXIT_CODE_HELP.items()
    )
    parser = argparse.ArgumentParser(
        prog="bloomlink",
        description="Privacy-preserving record linkage between departments.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bloomlink {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    logs = argparse.ArgumentParser(add_help=False)
    add_log_arguments(logs)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _load_commands():
        sub = subparsers.add_parser(
            module.NAME,  # type: ignore[attr-defined]
            help=module.HELP,  # type: ignore[attr-defined]
            description=module.HELP,  # type: ignore[attr-defined]
            parents=[logs],
            allow_abbrev=False,  # "--log" of audit verify must not read as "--log-file"
        )
        module.add_arguments(sub)  # type: ignore[attr-defined]
        sub.set_defaults(handler=module.run)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        configure_logging(verbose=args.verbose, log_format=args.log_format, log_file=args.log_file)
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("error: KeyboardInterrupt: interrupted; nothing was written", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BloomlinkError as error:
        message = error.message
        if isinstance(error, CompatibilityError):
            hint = explain_aspect(error.aspect, error.party)
            message += f" ({hint})" if hint else ""
        print(f"error: {type(error).__name__}: {message}", file=sys.stderr)
        return exit_code_for(error)
    except OSError as error:
        if error.filename is None or not error.strerror:
            return _unexpected(error, verbose=args.verbose)
        # A path a person gave (an output that is a directory, a folder they cannot write, a
        # full disk): their setup, not our bug. The path and the OS's reason are safe to show.
        print(
            f"error: {type(error).__name__}: cannot use {error.filename}: {error.strerror}",
            file=sys.stderr,
        )
        return ExitCode.CONFIGURATION
    except Exception as error:
        return _unexpected(error, verbose=args.verbose)


def _unexpected(error: BaseException, *, verbose: bool) -> int:
    # Never echo the exception's text: it could carry a record value. Its type and the
    # traceback's locations are enough to report; they go to the debug log (--verbose) so
    # the error stays one line by default.
    frames = "".join(traceback.format_tb(error.__traceback__))
    logging.getLogger("bloomlink").debug("unexpected %s at\n%s", type(error).__name__, frames)
    hint = "" if verbose else "; rerun with --verbose for where it happened"
    print(
        f"error: {type(error).__name__}: unexpected failure (please report it){hint}",
        file=sys.stderr,
    )
    return ExitCode.INTERNAL
