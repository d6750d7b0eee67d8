"""Network addresses: which ones stay on this machine.

Stage: transport. Plaintext is allowed only on loopback (``serve --insecure``, a Dask
scheduler without TLS); this is the one test of "loopback" both use.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_loopback"]


def is_loopback(address: str) -> bool:
    """Whether ``host:port``, ``[v6]:port`` or ``scheme://host:port`` names this machine
    (``localhost`` or a loopback IP address)."""
    if "://" in address:
        host = urlsplit(address).hostname or ""
    else:
        host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
