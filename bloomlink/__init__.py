"""The ``bloomlink`` command: a thin layer that composes the party and linkage-unit roles."""

__version__ = "0.1.0"
