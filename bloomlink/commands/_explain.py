"""Plain words for the linkage unit's compatibility refusals (not a command itself).

The linkage unit names the party and the aspect that differ (``kcv``, ``schema_fingerprint``
...: ``protocol.vocabulary.CheckAspect``) and never a key or a value; a person needs to hear
what that usually means and what to do. Used by ``project status`` and for any
``CompatibilityError`` the command line prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from protocol.vocabulary import CheckAspect

__all__ = ["explain_aspect"]

_RE_ENCODE = "Re-encode with the project's schema"

_PLAIN_WORDS: Mapping[CheckAspect, str] = MappingProxyType(
    {
        CheckAspect.SCHEMA_FINGERPRINT: "encoded under a different linkage schema than the "
        f"project's - a different schema file? {_RE_ENCODE} (bloomlink schema check prints "
        "the fingerprint to compare)",
        CheckAspect.LAYOUT: "sent an encoding whose field groups (names, order, lengths) are "
        "not the project's - a different schema file, or a project created without --schema? "
        f"{_RE_ENCODE}",
        CheckAspect.HARDENING: "sent an encoding whose groups are hardened differently from the "
        f"project's - a different schema file? {_RE_ENCODE}",
        CheckAspect.KEY_CONTEXT: "sent an encoding made for another key context than the "
        "project's - encoded without --spine NAME for a project joining a spine, or with it for "
        "one that joins none? Encode again as the project says (project status names its "
        "spine)",
        CheckAspect.KCV: "encoded under a different key than the other parties (or the "
        "project's spine) - a different linkage secret? Or, in a project joining a spine, "
        "encoded without --spine NAME? Every party must encode with the same secret file (a "
        "spine's parties also with --spine); agree on one and re-encode",
        CheckAspect.CLK_BITS: "sent CLKs of a different length than the other parties - a "
        f"different schema (clk_bits or hardening)? {_RE_ENCODE}",
        CheckAspect.RECORD_COUNT: "sent a payload that does not hold the records its header "
        "promises - a damaged or edited file? Re-encode and submit again",
        CheckAspect.DEGENERATE_CLKS: "sent CLKs with no bits or nearly every bit set - an "
        "empty or wrongly mapped column? Check the mapping and re-encode",
        CheckAspect.BIT_DENSITY: "sent CLKs much denser or sparser than the other parties' - "
        "different encoder settings, or a mapping that leaves fields empty? Compare the fill "
        "rates encode prints and re-encode",
    }
)
"""Every check aspect's words (tests/bloomlink/test_commands.py holds the keys to the enum)."""


def explain_aspect(aspect: str | None, party: str | None) -> str:
    """One sentence for a refusal on ``aspect`` of ``party``'s upload ('' if unknown)."""
    try:
        words = _PLAIN_WORDS[CheckAspect(aspect or "")]
    except (ValueError, KeyError):  # no aspect, or one from a newer linkage unit
        return ""
    return f"party {party or '(unknown)'} {words}"
