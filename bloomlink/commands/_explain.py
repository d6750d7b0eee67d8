"""Plain words for the linkage unit's compatibility refusals (not a command itself).

The linkage unit names the party and the aspect that differ (``kcv``, ``schema_fingerprint``
...) and never a key or a value; a person needs to hear what that usually means and what to
do. Used by ``project status`` and for any ``CompatibilityError`` the command line prints.
"""

from __future__ import annotations

__all__ = ["explain_aspect"]

_PLAIN_WORDS: dict[str, str] = {
    "schema_fingerprint": "encoded under a different linkage schema than the project's - a "
    "different schema file? Re-encode with the project's schema (bloomlink schema check "
    "prints the fingerprint to compare)",
    "kcv": "encoded under a different key than the other parties - a different linkage "
    "secret? Every party must encode with the same secret file; agree on one and re-encode",
    "clk_bits": "sent CLKs of a different length than the other parties - a different schema "
    "(clk_bits or hardening)? Re-encode with the project's schema",
    "record_count": "sent a payload that does not hold the records its header promises - a "
    "damaged or edited file? Re-encode and submit again",
    "degenerate_clks": "sent CLKs with no bits or nearly every bit set - an empty or wrongly "
    "mapped column? Check the mapping and re-encode",
    "layout": "sent an encoding whose field groups (names, order, lengths) are not the "
    "project's - a different schema file, or a project created without --schema? Re-encode "
    "with the project's schema",
    "hardening": "sent an encoding whose groups are hardened differently from the project's - "
    "a different schema file? Re-encode with the project's schema",
    "bit_density": "sent CLKs much denser or sparser than the other parties' - different "
    "encoder settings, or a mapping that leaves fields empty? Compare the fill rates encode "
    "prints and re-encode",
}


def explain_aspect(aspect: str | None, party: str | None) -> str:
    """One sentence for a refusal on ``aspect`` of ``party``'s upload ('' if unknown)."""
    words = _PLAIN_WORDS.get(aspect or "")
    if words is None:
        return ""
    return f"party {party or '(unknown)'} {words}"
