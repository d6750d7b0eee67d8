"""The department's recipe: extract -> encoded file, positions file and signed manifest.

Stage: the party's whole pre-send path, composed from the primitives (the encoder run, the
row sample, the leak scanner, the manifest signer). ``bloomlink encode``, ``bloomlink demo``
and ``benchmarks/end_to_end.py`` all call :func:`prepare_upload`; none writes the steps out.

One pass over the extract encodes it and draws a uniform random sample of its rows. From the
sample come the leak scan's sensitive strings (raw values, normalised values, tokens) and the
re-encodings, under a publicly known key, of the sampled records that were encoded: the
scan compares those with the CLKs at the same positions, so a file made without the linkage
secret is caught. Only if the scan is clean is the manifest signed, recording that both
checks ran and the encode's counts. The sample and the re-encodings stay in this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from party.encoder_run import (
    DEFAULT_BAD_ROW_LIMIT,
    BadRowLimit,
    BadRowPolicy,
    EncodeSummary,
    Progress,
    encode_extract,
)
from party.known_keys import KNOWN_KEY
from party.leak_scan import LeakScanReport, ScanProgress, UnkeyedReencoder
from party.manifest import EncodeCounts, manifest_path_for, vouch_for_encoded_file
from party.mapping import DepartmentMapping
from party.sensitive_strings import (
    DEFAULT_MAX_ROWS,
    RowSample,
    SensitiveStrings,
    strings_from_sample,
)
from protocol.encoding import ClkEncoder
from protocol.errors import ConfigurationError, RecordError
from protocol.manifest import FieldCount, SignedManifest
from protocol.schema import LinkageSchema
from protocol.secret import LinkageSecret

__all__ = ["PreparedUpload", "default_positions_path", "existing_outputs", "prepare_upload"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedUpload:
    """What :func:`prepare_upload` wrote and found (counts, digests, paths; no value)."""

    summary: EncodeSummary
    manifest: SignedManifest
    manifest_path: Path
    scan: LeakScanReport
    strings: SensitiveStrings

    def to_record(self) -> dict[str, object]:
        return {
            **self.summary.to_record(),
            "manifest_path": str(self.manifest_path),
            "manifest_sha256": self.manifest.manifest.sha256,
            "leak_scan": {
                "clean": self.scan.clean,
                "strings_checked": self.scan.strings_checked,
                "patterns_checked": self.scan.patterns_checked,
                "rows_sampled": self.strings.rows_sampled,
                "unkeyed_check": self.manifest.manifest.unkeyed_check,
            },
        }


def default_positions_path(encoded_path: Path) -> Path:
    """Where the private positions file goes by default: ``<encoded>.positions.csv``."""
    return encoded_path.with_name(encoded_path.name + ".positions.csv")


def existing_outputs(*paths: Path) -> list[Path]:
    return [path for path in paths if path.exists()]


def _known_key_sample(
    sample: RowSample,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    project_id: str,
) -> tuple[UnkeyedReencoder, npt.NDArray[np.int64]]:
    """Re-encodings under :data:`KNOWN_KEY` of the sampled rows that were encoded, by the
    position of their CLK, and those positions."""
    bound = mapping.bind(schema, sample.header, date_columns=sample.date_columns)
    values_at: dict[int, list[str | None]] = {}
    for number, row in zip(sample.row_numbers, sample.rows, strict=True):
        position = sample.positions.get(number)
        if position is None:
            continue  # skipped as bad: it sent nothing
        try:
            # Blanked values are missing in the keyed CLK too.
            values_at[position] = bound.normalise(row, row_number=number, blanked=[])
        except RecordError:
            continue
    encoder = ClkEncoder(schema, LinkageSecret(KNOWN_KEY), project_id=project_id)

    def reencode(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        return encoder.encode_many(values_at[int(position)] for position in positions)

    return reencode, np.asarray(sorted(values_at), dtype=np.int64)


def prepare_upload(
    *,
    extract_path: Path | str,
    mapping: DepartmentMapping,
    schema: LinkageSchema,
    secret: LinkageSecret,
    project_id: str,
    party: str,
    signing_key: Ed25519PrivateKey,
    software_version: str,
    encoded_path: Path | str,
    positions_path: Path | str | None = None,
    bad_rows: BadRowPolicy | str = BadRowPolicy.FAIL,
    max_bad_rows: BadRowLimit = DEFAULT_BAD_ROW_LIMIT,
    workers: int | None = None,
    overwrite: bool = False,
    scan_rows: int = DEFAULT_MAX_ROWS,
    progress: Progress | None = None,
    scan_progress: ScanProgress | None = None,
    generator: np.random.Generator | None = None,
    sample_generator: np.random.Generator | None = None,
    key_context: str | None = None,
    same_positions: Path | str | None = None,
) -> PreparedUpload:
    """Encode an extract, leak-scan the output and sign its manifest, in one pass.

    Refuses to replace an existing encoded file, positions file or manifest unless
    ``overwrite``: a re-encode changes the shuffle, so an old positions file would join
    link keys to the wrong records. A scan finding raises :class:`AuditError` and leaves no
    manifest (``bloomlink submit`` will not send the file).
    """
    encoded = Path(encoded_path)
    positions = Path(positions_path) if positions_path else default_positions_path(encoded)
    manifest_path = manifest_path_for(encoded)
    present = existing_outputs(encoded, positions, manifest_path)
    if present and not overwrite:
        raise ConfigurationError(
            f"{', '.join(map(str, present))} exist(s) already: a new encode shuffles the "
            "records afresh, so the old positions file would no longer fit. Choose another "
            "--out, or give --force to replace them (never after submitting the old file)"
        )
    sample = RowSample(scan_rows, sample_generator or np.random.default_rng())
    summary = encode_extract(
        extract_path=extract_path,
        mapping=mapping,
        schema=schema,
        secret=secret,
        project_id=project_id,
        encoded_path=encoded,
        positions_path=positions,
        key_context=key_context,
        bad_rows=bad_rows,
        max_bad_rows=max_bad_rows,
        workers=workers,
        progress=progress,
        generator=generator,
        observer=sample,
        same_positions=same_positions,
    )
    if scan_progress:
        # The scan's bar starts now: drawing its strings and patterns takes a while too.
        scan_progress(0, encoded.stat().st_size)
    strings = strings_from_sample(sample, mapping, schema, source=str(extract_path))
    reencode, sampled_positions = _known_key_sample(sample, mapping, schema, project_id)
    counts = EncodeCounts(
        rows_read=summary.rows_read,
        rows_skipped=summary.rows_skipped,
        field_counts=tuple(
            FieldCount(field=item.field, missing=item.missing, blanked=item.blanked)
            for item in summary.fields
        ),
    )
    signed, report = vouch_for_encoded_file(
        encoded,
        signing_key=signing_key,
        party=party,
        strings=strings,
        software_version=software_version,
        manifest_path=manifest_path,
        unkeyed_reencoder=reencode,
        unkeyed_positions=sampled_positions,
        counts=counts,
        progress=scan_progress,
    )
    return PreparedUpload(
        summary=summary,
        manifest=signed,
        manifest_path=manifest_path,
        scan=report,
        strings=strings,
    )
