"""Identities: who is calling the linkage unit, as carried in a certificate's URI SAN.

A client certificate carries exactly one URI of the form ``bloomlink:party:<name>``,
``bloomlink:operator`` or ``bloomlink:auditor``. The linkage unit maps the verified peer
certificate to one :class:`Identity`; anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol.errors import ConfigurationError
from protocol.labels import check_label

__all__ = ["URI_PREFIX", "Identity", "Role"]

URI_PREFIX = "bloomlink:"


class Role(StrEnum):
    PARTY = "party"
    OPERATOR = "operator"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A caller's role, and for a party its name (a label)."""

    role: Role
    party: str | None = None

    def __post_init__(self) -> None:
        if self.role is Role.PARTY:
            check_label(self.party or "", what="party name")
        elif self.party is not None:
            raise ConfigurationError(f"the {self.role} role carries no party name")

    @property
    def uri(self) -> str:
        """The certificate URI SAN for this identity."""
        if self.role is Role.PARTY:
            return f"{URI_PREFIX}party:{self.party}"
        return f"{URI_PREFIX}{self.role}"

    @property
    def text(self) -> str:
        """``party:<name>``, ``operator`` or ``auditor``: for logs, audit and dev metadata."""
        return self.uri.removeprefix(URI_PREFIX)

    @classmethod
    def from_text(cls, text: str) -> Identity:
        """Parse ``party:<name>`` / ``operator`` / ``auditor`` (the URI without its prefix)."""
        if text == Role.OPERATOR:
            return cls(role=Role.OPERATOR)
        if text == Role.AUDITOR:
            return cls(role=Role.AUDITOR)
        kind, _, name = text.partition(":")
        if kind != Role.PARTY:
            raise ConfigurationError("identity must be party:<name>, operator or auditor")
        return cls(role=Role.PARTY, party=name)

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse a certificate URI SAN; a foreign or malformed URI is a ConfigurationError."""
        if not uri.startswith(URI_PREFIX):
            raise ConfigurationError("not a bloomlink identity URI")
        return cls.from_text(uri.removeprefix(URI_PREFIX))
