"""Checks before any comparison: can these parties' CLKs be compared at all?

Run by the linkage unit after every member has uploaded and before matching. Every party
must have used the project's schema (fingerprint), the project's layout and hardening (a
grouped encoding's groups, checked at upload time too), the same linkage secret (KCV) and the
same CLK length; record counts must match the headers; CLKs must look like CLKs (no
all-zero or near-all-one filters, per-party mean bit density near the others'). A mismatch is a
:class:`CompatibilityError` naming the party and the aspect, never a key or a value:
a silent zero-match run is the failure this stage exists to prevent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.errors import CompatibilityError
from protocol.labels import spine_key_context
from protocol.messages import ProjectSettings, UploadHeader
from protocol.vocabulary import CheckAspect, UploadRefusal

__all__ = [
    "MAX_DENSITY_GAP",
    "MAX_RECORD_DENSITY",
    "check_clks",
    "check_headers",
    "HeaderRefusal",
    "check_layout",
    "compatibility_refusal",
    "layout_error",
]

MAX_RECORD_DENSITY = 0.9
"""Largest share of set bits in one CLK. Real encodings sit near 0.3-0.5; a CLK above this
would match many records at a high Dice score and could be used to probe the others'."""

MAX_DENSITY_GAP = 0.15
"""Largest allowed gap between one party's mean bit density and the median of all parties'.
Parties encoding the same population under one schema land within a few hundredths."""


def _odd_one_out(values: Mapping[str, object], order: tuple[str, ...]) -> str | None:
    """The first party (in member order) whose value differs from the most common one;
    ties go to the first member's value."""
    counts = Counter(values.values())
    top = max(counts.values())
    reference = next(values[party] for party in order if counts[values[party]] == top)
    return next((party for party in order if values[party] != reference), None)


def layout_error(project: ProjectSettings, header: UploadHeader) -> CompatibilityError | None:
    """Why the upload's layout or hardening is not the project's, or None: a grouped project
    takes only format 2 uploads with exactly its groups (names, bits, hardening descriptors);
    a project created without a layout takes only single record-level CLKs (format 1)."""
    party = header.party_id
    expected = project.layout
    if expected is None:
        if header.layout is None:
            return None
        return CompatibilityError(
            f"party {party!r} sent a grouped encoding (file format 2) but the project was "
            "created without a layout; the operator must create it with --schema",
            party=party,
            aspect=CheckAspect.LAYOUT,
        )
    actual = header.layout
    if actual is None or actual.geometry != expected.geometry:
        return CompatibilityError(
            f"party {party!r} sent an encoding whose field groups differ from the project's "
            "(names, order or lengths); it must re-encode with the project schema",
            party=party,
            aspect=CheckAspect.LAYOUT,
        )
    if actual != expected:
        return CompatibilityError(
            f"party {party!r} sent an encoding hardened differently from the project's "
            "(hardening method or parameters); it must re-encode with the project schema",
            party=party,
            aspect=CheckAspect.HARDENING,
        )
    return None


def check_layout(project: ProjectSettings, header: UploadHeader) -> None:
    """Raise :func:`layout_error`'s error, if any."""
    error = layout_error(project, header)
    if error is not None:
        raise error


def check_headers(project: ProjectSettings, headers: Mapping[str, UploadHeader]) -> None:
    """Schema fingerprints (against the project's), layouts, KCVs and CLK lengths must agree."""
    order = tuple(party for party in project.members if party in headers)
    for party in order:
        if headers[party].schema_fingerprint != project.schema_fingerprint:
            raise CompatibilityError(
                f"party {party!r} encoded with a different schema than the project's "
                "(schema fingerprint differs); it must re-encode with the project schema",
                party=party,
                aspect=CheckAspect.SCHEMA_FINGERPRINT,
            )
    for party in order:
        check_layout(project, headers[party])
    kcv_party = _odd_one_out({party: headers[party].kcv for party in order}, order)
    if kcv_party is not None:
        raise CompatibilityError(
            f"party {kcv_party!r} encoded under a different linkage secret than party "
            f"{order[0] if order[0] != kcv_party else order[1]!r} (key check values differ); "
            "the parties must agree on one secret and re-encode",
            party=kcv_party,
            aspect=CheckAspect.KCV,
        )
    bits_party = _odd_one_out({party: headers[party].clk_bits for party in order}, order)
    if bits_party is not None:
        raise CompatibilityError(
            f"party {bits_party!r} sent CLKs of a different length than the other parties",
            party=bits_party,
            aspect=CheckAspect.CLK_BITS,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderRefusal:
    """Why an upload's header was refused: the audit reason and the error for the party."""

    reason: UploadRefusal
    error: CompatibilityError


def key_context_error(project: ProjectSettings, header: UploadHeader) -> CompatibilityError | None:
    """Whether the header's key context (what its keys and KCV were derived for, as the
    encoded file says) is the project's: its spine's for a project of a spine, the project
    id's otherwise. Without this a spine's first run would bind whatever KCV its uploads
    share, an encoding made without ``--spine`` included, and refuse every correct one
    after it. A file from before the field says no context: fine for a one-off project,
    refused for a spine's (it cannot show it was made for the spine). The context is what
    the party says: its signed manifest states it, and the manifest check before this one
    refuses a header whose context the manifest does not (``manifest_mismatches``), so it
    cannot be edited without the party's key. It catches an encode run without ``--spine``;
    that the keys are the spine's is shown only by the KCV, checked next against the spine's
    bound one and the other members'."""
    party = header.party_id
    if project.spine is not None and header.key_context != spine_key_context(project.spine):
        made = (
            "without --spine (its keys derived for the project, or a file from a bloomlink "
            "that did not record its key context)"
            if header.key_context is None
            else f"for another key context ({header.key_context})"
        )
        return CompatibilityError(
            f"party {party}'s file was encoded {made}, but project {project.project_id} joins "
            f"spine {project.spine}, whose encodings must be made for the spine: encode "
            f"again with --spine {project.spine} and the spine's secret",
            party=party,
            aspect=CheckAspect.KEY_CONTEXT,
        )
    if project.spine is None and header.key_context is not None:
        return CompatibilityError(
            f"party {party}'s file was encoded for {header.key_context}, but project "
            f"{project.project_id} joins no spine: encode again without --spine",
            party=party,
            aspect=CheckAspect.KEY_CONTEXT,
        )
    return None


def compatibility_refusal(
    project: ProjectSettings,
    header: UploadHeader,
    others: Sequence[UploadHeader],
    *,
    spine_kcv: bytes | None = None,
) -> HeaderRefusal | None:
    """Why an upload's header can never be compared in this project, in plain words, or
    None. Checked when the header arrives, before any byte is stored: the schema fingerprint,
    the layout and each group's hardening must be the project's, and so must the key context
    (:func:`key_context_error`: its spine's, or none); the KCV must be the one the
    project's spine is bound to (``spine_kcv``, once a run has bound it); once another member
    has uploaded, the KCV and the CLK length must be theirs. (The run checks the same again,
    with the CLKs themselves.) This is the one place an upload's header is judged against
    the project, its spine and the other uploads."""
    party = header.party_id
    if header.schema_fingerprint != project.schema_fingerprint:
        return HeaderRefusal(
            reason=UploadRefusal.SCHEMA_FINGERPRINT,
            error=CompatibilityError(
                "your file was encoded with a different schema than the project's (the schema "
                "fingerprints differ): encode it again with the project's schema",
                party=party,
                aspect=CheckAspect.SCHEMA_FINGERPRINT,
            ),
        )
    layout = layout_error(project, header)
    if layout is not None:
        return HeaderRefusal(reason=UploadRefusal(str(layout.aspect)), error=layout)
    context = key_context_error(project, header)
    if context is not None:
        return HeaderRefusal(reason=UploadRefusal.KEY_CONTEXT, error=context)
    if spine_kcv is not None and header.kcv != spine_kcv:
        return HeaderRefusal(
            reason=UploadRefusal.KCV,
            error=CompatibilityError(
                f"your key check value is not the one spine {project.spine!r} is bound to: "
                f"encoded without --spine {project.spine} (the keys are derived for the "
                "spine, not the project), or under another linkage secret than the spine's? "
                f"Encode again with --spine {project.spine} and the spine's secret; a spine "
                "moves to a new secret only by key rotation (docs/spine.md, Key rotation)",
                party=party,
                aspect=CheckAspect.KCV,
            ),
        )
    for other in others:
        if header.kcv != other.kcv:
            spine = (
                ""
                if project.spine is None
                else f" (this project joins spine {project.spine}: every party encodes with "
                f"--spine {project.spine})"
            )
            return HeaderRefusal(
                reason=UploadRefusal.KCV,
                error=CompatibilityError(
                    "your key check value differs from the other parties' - a different "
                    "linkage secret? Check with the other parties that you hold the same "
                    f"secret file for this project{spine}, then encode again",
                    party=party,
                    aspect=CheckAspect.KCV,
                ),
            )
        if header.clk_bits != other.clk_bits:
            return HeaderRefusal(
                reason=UploadRefusal.CLK_BITS,
                error=CompatibilityError(
                    f"your CLKs are {header.clk_bits} bits long, not the length of the other "
                    "parties': the encoder settings differ; encode again with the project's "
                    "schema and the same bloomlink version",
                    party=party,
                    aspect=CheckAspect.CLK_BITS,
                ),
            )
    return None


def check_clks(
    clks_by_party: Mapping[str, npt.NDArray[np.uint64]],
    headers: Mapping[str, UploadHeader],
) -> None:
    """Record counts match the headers; no degenerate CLKs; densities plausible."""
    densities: dict[str, float] = {}
    for party, clks in clks_by_party.items():
        header = headers[party]
        if clks.shape != (header.record_count, header.clk_bits // 64):
            raise CompatibilityError(
                f"party {party!r} sent a payload that does not hold the record count its "
                "header promises",
                party=party,
                aspect=CheckAspect.RECORD_COUNT,
            )
        if header.record_count == 0:
            continue
        counts = np.bitwise_count(np.asarray(clks))
        popcounts = counts.sum(axis=1, dtype=np.int64)
        # Near-all-one filters score a high Dice against almost anything: a probe, not a record.
        # A grouped record is checked group by group too (a probe may fill one group only).
        ceiling = MAX_RECORD_DENSITY * header.clk_bits
        bad = (popcounts == 0) | (popcounts > ceiling)
        layout = header.clk_layout
        if len(layout.groups) > 1:
            for index, group in enumerate(layout.groups):
                start, stop = layout.word_range(index)
                group_counts = counts[:, start:stop].sum(axis=1, dtype=np.int64)
                bad |= group_counts > MAX_RECORD_DENSITY * group.bits
        degenerate = int(np.count_nonzero(bad))
        if degenerate:
            raise CompatibilityError(
                f"party {party!r} sent {degenerate} CLK(s) with no bits or nearly every bit "
                f"set (over {MAX_RECORD_DENSITY:.0%}); "
                "check its extract and encoder (empty records encode to all-zero CLKs)",
                party=party,
                aspect=CheckAspect.DEGENERATE_CLKS,
            )
        densities[party] = float(popcounts.mean()) / header.clk_bits
    if len(densities) >= 2:
        median = float(np.median(list(densities.values())))
        party, gap = max(
            ((name, abs(value - median)) for name, value in densities.items()),
            key=lambda item: item[1],
        )
        if gap > MAX_DENSITY_GAP:
            raise CompatibilityError(
                f"party {party!r} has a mean CLK bit density far from the other parties' "
                f"(gap {gap:.2f} > {MAX_DENSITY_GAP}); the parties likely used different "
                "encoder settings",
                party=party,
                aspect=CheckAspect.BIT_DENSITY,
            )
