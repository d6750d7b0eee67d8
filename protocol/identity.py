"""Identities: who is calling the linkage unit, as carried in a certificate's URI SAN.

A client certificate names its holder in exactly one URI SAN of the exact form
``bloomlink:party:<name>``, ``bloomlink:operator`` or ``bloomlink:auditor``; it must carry
the clientAuth extended key usage and must not be a CA. The subject's common name, DNS
names and e-mail addresses are never read: a role is taken from one place only, so no other
field of a certificate the CA signed for another purpose can grant one.
:func:`identity_from_certificate` is the one reader the linkage unit uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocol.errors import ConfigurationError, UnauthenticatedError
from protocol.labels import check_label

__all__ = ["URI_PREFIX", "Identity", "Role", "identity_from_certificate"]

URI_PREFIX = "bloomlink:"
# The whole URI, exactly: a role, and for a party one label. Anything else is refused.
_IDENTITY_URI = re.compile(r"^bloomlink:(?:operator|auditor|party:[a-z][a-z0-9-]{0,62})$")
_REFUSED = (
    "the client certificate does not name exactly one bloomlink identity in a URI SAN of a "
    "clientAuth, non-CA certificate; ask the deployment's CA for a bloomlink client certificate"
)


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
        return cls.from_uri(URI_PREFIX + text)

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse a certificate URI SAN; anything but the exact form is a ConfigurationError."""
        if not isinstance(uri, str) or not _IDENTITY_URI.fullmatch(uri):
            raise ConfigurationError("identity must be party:<name>, operator or auditor")
        text = uri.removeprefix(URI_PREFIX)
        if text == Role.OPERATOR:
            return cls(role=Role.OPERATOR)
        if text == Role.AUDITOR:
            return cls(role=Role.AUDITOR)
        return cls(role=Role.PARTY, party=text.removeprefix("party:"))


def _claims(uri: str) -> bool:
    # Any URI whose scheme reads "bloomlink" in any case claims an identity, so a second or
    # oddly spelled claim refuses the certificate rather than being skipped over.
    scheme, separator, _ = uri.partition(":")
    return bool(separator) and scheme.strip().lower() == "bloomlink"


def identity_from_certificate(certificate_pem: bytes) -> Identity:
    """The identity a verified client certificate (PEM) carries, or UnauthenticatedError.

    The chain and validity are checked by TLS before this is called; here: the certificate
    is not a CA, has the clientAuth usage, and has exactly one URI SAN claiming a bloomlink
    identity, of the exact form. The message never says which condition failed.
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        extensions = certificate.extensions
        try:
            constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
            if constraints.ca:
                raise UnauthenticatedError(_REFUSED)
        except x509.ExtensionNotFound:
            pass
        try:
            usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise UnauthenticatedError(_REFUSED) from None
        if ExtendedKeyUsageOID.CLIENT_AUTH not in list(usages):
            raise UnauthenticatedError(_REFUSED)
        try:
            names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise UnauthenticatedError(_REFUSED) from None
        claims = [
            uri for uri in names.get_values_for_type(x509.UniformResourceIdentifier) if _claims(uri)
        ]
    except (ValueError, TypeError):  # malformed certificate or extension
        raise UnauthenticatedError(_REFUSED) from None
    if len(claims) != 1:
        raise UnauthenticatedError(_REFUSED)
    try:
        return Identity.from_uri(claims[0])
    except ConfigurationError:
        raise UnauthenticatedError(_REFUSED) from None
