"""Labels: project ids and party names, the only free-form strings the protocol carries.

They are restricted to lower-case letters, digits and hyphens so that no personal
identifier (a name, a date, a postcode with its space) can travel in one, and so they are
safe in file names, certificate names and log lines.
"""

from __future__ import annotations

import re

from protocol.errors import ConfigurationError

__all__ = [
    "LABEL_PATTERN",
    "SPINE_CONTEXT_PREFIX",
    "check_key_context",
    "check_label",
    "spine_key_context",
    "spine_of_key_context",
]

LABEL_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def check_label(value: str, *, what: str) -> str:
    """Return ``value`` if it is a valid label, else raise naming ``what`` it was for."""
    if not isinstance(value, str) or not LABEL_PATTERN.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter"
        )
    return value


SPINE_CONTEXT_PREFIX = "spine:"


def spine_key_context(spine: str) -> str:
    """What the field keys and KCV of a project joining ``spine`` are derived for, in place
    of its project id: every project of a spine then encodes comparably. The colon cannot
    appear in a project id, so a spine's context never equals a project's (docs/spine.md).
    A name, no secret: encoded files and upload headers carry it (``key_context``)."""
    check_label(spine, what="spine name")
    return f"{SPINE_CONTEXT_PREFIX}{spine}"


def check_key_context(value: str) -> str:
    """Return ``value`` if it is a key context a file may name (a spine's), else raise."""
    if not (
        isinstance(value, str)
        and value.startswith(SPINE_CONTEXT_PREFIX)
        and LABEL_PATTERN.fullmatch(value[len(SPINE_CONTEXT_PREFIX) :])
    ):
        raise ConfigurationError(
            "a key context must be 'spine:' and the spine name (1-63 characters of a-z, 0-9 "
            "and '-', starting with a letter)"
        )
    return value


def spine_of_key_context(value: str) -> str:
    """The spine a key context names (``spine:people`` -> ``people``), after checking it."""
    return check_key_context(value)[len(SPINE_CONTEXT_PREFIX) :]
