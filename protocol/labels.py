"""Labels: project ids and party names, the only free-form strings the protocol carries.

They are restricted to lower-case letters, digits and hyphens so that no personal
identifier (a name, a date, a postcode with its space) can travel in one, and so they are
safe in file names, certificate names and log lines.
"""

from __future__ import annotations

import re

from protocol.errors import ConfigurationError

__all__ = ["LABEL_PATTERN", "check_label"]

LABEL_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def check_label(value: str, *, what: str) -> str:
    """Return ``value`` if it is a valid label, else raise naming ``what`` it was for."""
    if not isinstance(value, str) or not LABEL_PATTERN.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter"
        )
    return value
