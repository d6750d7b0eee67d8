"""The auditor: checks a linkage unit's audit log, its views, and the parties' manifests.

Stage: audit, auditor side. Imports only ``protocol`` (tests/test_architecture.py): an
auditor needs the log, the LU's public key and the shared record format, never the linkage
unit's code, a party's code or the linkage secret.
"""
