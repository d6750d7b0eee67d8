"""`bloomlink spine`: the operator's persistent population of people (docs/spine.md).

These commands work on the linkage unit's data directory while the linkage unit is stopped
(they take its audit log, which one process holds at a time) and append their audit events:
``keygen`` makes the spine key, ``create`` a spine, ``show`` its figures, ``crosswalk``
releases the merges' old key -> current key table, ``rotate`` moves the spine to a new
linkage secret from the parties' re-encodings, each vouched for by its party's signed
manifest under the party's registered key (every person keeps its keys), ``prune``
applies a retention policy (records' encodings go, people and keys stay; a spine with a
policy also prunes itself when a run into it completes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bloomlink.commands._output import add_json_flag, emit
from linkage_unit.audit_log import AuditLog
from linkage_unit.manifest_policy import ManifestPolicy
from linkage_unit.reencoding import ReencodedUpload, reencoding_refusal
from linkage_unit.server import load_config
from linkage_unit.spine import (
    DEFAULT_ATTACH_PROBABILITY,
    SPINE_KEY_BYTES,
    Reencoding,
    SpineEventKind,
    SpineSettings,
    SpineState,
    SpineStore,
    prune_spine,
    read_spine_key,
    rotate_spine,
    spine_directory,
)
from linkage_unit.storage import Storage
from party.manifest import manifest_path_for
from protocol.audit_events import (
    CrosswalkReleased,
    SpineCreated,
    SpinePruned,
    SpineRotated,
    UploadRefused,
)
from protocol.clk_file import read_clks, read_header
from protocol.errors import ConfigurationError
from protocol.labels import check_label
from protocol.manifest import read_manifest
from protocol.messages import LinkKeyMode, UploadHeader
from protocol.schema import load_schema_identity
from protocol.signing import load_public_key

NAME = "spine"
HELP = "create and inspect spines: link keys that survive refreshes (operator, LU stopped)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="spine_action", required=True, metavar="ACTION")
    keygen = sub.add_parser("keygen", help="create the operator's spine key file (32 bytes)")
    keygen.add_argument("--out", required=True, type=Path, help="new key file (must not exist)")
    create = sub.add_parser("create", help="create a spine bound to a schema")
    create.add_argument("name")
    create.add_argument("--parties", required=True, help="comma-separated parties allowed")
    binding = create.add_mutually_exclusive_group(required=True)
    binding.add_argument(
        "--schema",
        type=Path,
        help="the linkage schema file (or schema check --json's output for it)",
    )
    binding.add_argument("--schema-fingerprint", help="hex SHA-256 of the schema, instead")
    create.add_argument(
        "--max-merge-share",
        type=float,
        default=0.05,
        help="a run that would merge more than this share of the spine's people fails "
        "before any key is issued (default 0.05)",
    )
    create.add_argument(
        "--attach-probability",
        type=float,
        default=DEFAULT_ATTACH_PROBABILITY,
        help="with Fellegi-Sunter scoring: the match probability a new record's own best pair "
        "with an existing person needs for the record to take that person's key (the "
        "project's link cut where higher). Higher: fewer new people given the key of a "
        "look-alike who left, more returning people given a new key (default "
        f"{DEFAULT_ATTACH_PROBABILITY}, docs/spine.md)",
    )
    create.add_argument(
        "--link-key-mode", choices=[mode.value for mode in LinkKeyMode], default="shared"
    )
    create.add_argument(
        "--keep-runs",
        type=int,
        help="retention: each run into the spine, as it completes, keeps the encodings of "
        "the last N runs' records only (people and keys are kept; `spine prune` applies it "
        "too); default: keep every record",
    )
    show = sub.add_parser("show", help="a spine's parties, binding and figures")
    show.add_argument("name")
    rotate = sub.add_parser(
        "rotate",
        help="move the spine to a new linkage secret from every party's re-encoding of its "
        "earlier uploads (encode --same-positions); each person keeps its keys, audited",
    )
    rotate.add_argument("name")
    rotate.add_argument(
        "--reencoded",
        required=True,
        action="append",
        metavar="PARTY=FILE",
        help="a party's re-encoded file of one earlier upload (its header names the project), "
        "with its signed manifest beside it (FILE.manifest.json); one per upload the spine "
        "holds records of, repeat the flag",
    )
    rotate.add_argument(
        "--party-key",
        action="append",
        default=[],
        metavar="PARTY=PEM",
        help="a party's registered manifest public key, as `serve --party-key` takes it "
        "(repeat per party); each re-encoding's manifest must be signed by its party's key",
    )
    rotate.add_argument(
        "--config",
        type=Path,
        help="the linkage unit's TOML config: its [party_keys] are the registered keys",
    )
    prune = sub.add_parser(
        "prune", help="retention: remove old records' encodings, keep people and keys, audited"
    )
    prune.add_argument("name")
    prune.add_argument(
        "--keep-runs", type=int, help="keep the last N runs' records (default: the spine's policy)"
    )
    crosswalk = sub.add_parser(
        "crosswalk", help="release the crosswalk (old link key -> current link key), audited"
    )
    crosswalk.add_argument("name")
    crosswalk.add_argument("--out", required=True, type=Path, help="CSV to write")
    for action in (create, show, crosswalk, rotate, prune):
        action.add_argument("--data-dir", required=True, type=Path, help="the LU's data dir")
        action.add_argument(
            "--spine-key", required=True, type=Path, help="the operator's spine key file"
        )
    for action in (create, crosswalk, rotate, prune):
        action.add_argument("--audit-log", type=Path, help="default <data-dir>/audit.jsonl")
        action.add_argument(
            "--audit-signing-key", type=Path, help="default <data-dir>/audit-signing-key.pem"
        )
    for action in (keygen, create, show, crosswalk, rotate, prune):
        add_json_flag(action)


def _store(args: argparse.Namespace) -> SpineStore:
    return SpineStore(spine_directory(args.data_dir), read_spine_key(args.spine_key))


def _audit(args: argparse.Namespace) -> AuditLog:
    return AuditLog.open(
        args.audit_log or args.data_dir / "audit.jsonl",
        signing_key_path=args.audit_signing_key or args.data_dir / "audit-signing-key.pem",
    )


def run(args: argparse.Namespace) -> int:
    if args.spine_action == "keygen":
        try:
            descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            raise ConfigurationError(f"cannot create {args.out}: {error.strerror}") from None
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(os.urandom(SPINE_KEY_BYTES))
        emit(
            args,
            {"kind": "spine-key", "path": str(args.out)},
            [f"wrote a new spine key to {args.out} (mode 0600); keep it at the linkage unit"],
        )
        return 0
    store = _store(args)
    if args.spine_action == "create":
        if args.schema is not None:
            # The schema file, or schema check --json's summary of it.
            fingerprint = load_schema_identity(args.schema).fingerprint
        else:
            try:
                fingerprint = bytes.fromhex(args.schema_fingerprint)
            except ValueError:
                raise ConfigurationError("--schema-fingerprint must be hex") from None
        settings = SpineSettings(
            name=args.name,
            parties=tuple(p.strip() for p in args.parties.split(",") if p.strip()),
            schema_fingerprint=fingerprint.hex(),
            link_key_mode=LinkKeyMode(args.link_key_mode),
            max_merge_share=args.max_merge_share,
            keep_runs=args.keep_runs,
            attach_probability=args.attach_probability,
        )
        with _audit(args) as audit:
            store.create(settings)
            audit.append(
                SpineCreated(
                    spine=settings.name,
                    parties=settings.parties,
                    schema_fingerprint=fingerprint,
                    max_merge_share_millionths=round(settings.max_merge_share * 1_000_000),
                )
            )
        emit(
            args,
            {"spine": settings.name, "parties": list(settings.parties)},
            [
                f"spine {settings.name} created for {', '.join(settings.parties)}; the first "
                "run into it binds its KCV"
            ],
        )
        return 0
    state = store.load(args.name)
    if args.spine_action == "show":
        record = {
            "spine": state.settings.name,
            "parties": list(state.settings.parties),
            "kcv_bound": state.settings.kcv is not None,
            "people": state.person_count,
            "records": len(state.record_person),
            "runs": len(state.runs),
            "merges": sum(1 for event in state.events if event.kind is SpineEventKind.MERGE),
            "splits": sum(1 for event in state.events if event.kind is SpineEventKind.SPLIT),
            "held_apart": sum(
                1 for event in state.events if event.kind is SpineEventKind.HELD_APART
            ),
            "keep_runs": state.settings.keep_runs,
            "attach_probability": state.settings.attach_probability,
        }
        # The uploads whose records the spine holds: what a key rotation needs re-encoded.
        held = np.bincount(
            state.record_origin[state.record_origin >= 0], minlength=len(state.origins)
        )
        uploads = [
            {"project": origin.project_id, "party": origin.party, "records": origin.records}
            for index, origin in enumerate(state.origins)
            if held[index]
        ]
        lines = [f"{key}: {value}" for key, value in record.items()]
        lines += [f"holds records of {u['party']}'s upload to {u['project']}" for u in uploads]
        emit(args, {**record, "uploads": uploads}, lines)
        return 0
    if args.spine_action == "rotate":
        return _rotate(args, store, state)
    if args.spine_action == "prune":
        return _prune(args, store, state)
    rows = state.crosswalk().rows
    text = "old_link_key,current_link_key\n" + "".join(f"{old},{new}\n" for old, new in rows)
    data = text.encode("ascii")
    with _audit(args) as audit:
        descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        audit.append(
            CrosswalkReleased(
                spine=state.settings.name,
                row_count=len(rows),
                crosswalk_sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    emit(
        args,
        {"spine": state.settings.name, "rows": len(rows), "path": str(args.out)},
        [f"wrote {len(rows)} crosswalk rows of spine {state.settings.name} to {args.out}"],
    )
    return 0


def _pair(item: str, flag: str, what: str) -> tuple[str, Path]:
    party, separator, path = item.partition("=")
    if not separator or not party or not path:
        raise ConfigurationError(f"{flag} takes PARTY={what}")
    return check_label(party, what=f"{flag} party"), Path(path)


def _registered_keys(args: argparse.Namespace) -> dict[str, Ed25519PublicKey]:
    """The parties' registered manifest keys, as the linkage unit takes them: its config's
    ``[party_keys]``, then ``--party-key`` flags (which win)."""
    paths: dict[str, Path] = {}
    if args.config is not None:
        paths.update(load_config(args.config, data_dir=args.data_dir).party_keys)
    paths.update(_pair(item, "--party-key", "PEM") for item in args.party_key)
    return {party: load_public_key(path) for party, path in paths.items()}


def _rotate(args: argparse.Namespace, store: SpineStore, state: SpineState) -> int:
    policy = ManifestPolicy(require_manifest=True, party_keys=_registered_keys(args))
    files = [_pair(item, "--reencoded", "FILE") for item in args.reencoded]
    uploads = []
    for party, path in files:
        header = UploadHeader.from_clk_file_header(read_header(path), party_id=party)
        beside = manifest_path_for(path)
        manifest = read_manifest(beside) if beside.exists() else None
        uploads.append(
            ReencodedUpload(party=party, source=str(path), header=header, manifest=manifest)
        )
    # Every manifest is judged before any CLK is read; the LU's storage (held while this
    # runs: the LU must be stopped) says which nonces committed uploads have used.
    storage = Storage(args.data_dir)
    try:
        refused = reencoding_refusal(
            policy,
            uploads,
            now=time.time(),
            vouched_for=storage.manifest_for_nonce,
            spine=state.settings.name,
        )
    finally:
        storage.close()
    if refused is not None:
        header = refused.upload.header
        if header.project_id in {origin.project_id for origin in state.origins}:
            # Audited as the upload path audits a refused upload (a project the log knows).
            with _audit(args) as audit:
                audit.append(
                    UploadRefused(
                        project_id=header.project_id,
                        party=header.party_id,
                        reason=refused.refusal.reason,
                        manifest_sha256=None
                        if refused.upload.manifest is None
                        else refused.upload.manifest.manifest.sha256,
                    )
                )
        raise refused.error
    reencodings = []
    for (party, path), upload in zip(files, uploads, strict=True):
        read, clks = read_clks(path)  # checks the payload against its header's digest
        if read.payload_sha256 != upload.header.payload_sha256:
            raise ConfigurationError(f"{path} changed while the rotation read it; run it again")
        reencodings.append(
            Reencoding(
                project_id=read.project_id,
                party=party,
                schema_fingerprint=read.schema_fingerprint.hex(),
                kcv=read.kcv.hex(),
                clks=np.array(clks, dtype=np.uint64),
            )
        )
    rotation = rotate_spine(state, reencodings)  # refuses before anything is written
    with _audit(args) as audit:
        store.save(rotation.state)
        audit.append(
            SpineRotated(
                spine=state.settings.name,
                old_kcv=bytes.fromhex(rotation.old_kcv),
                new_kcv=bytes.fromhex(rotation.new_kcv),
                records=rotation.records,
                uploads=len(reencodings),
            )
        )
    emit(
        args,
        {"spine": state.settings.name, "records": rotation.records, "uploads": len(reencodings)},
        [
            f"spine {state.settings.name} now takes uploads under the new linkage secret only: "
            f"{rotation.records} records re-encoded from {len(reencodings)} files, every "
            "person keeps its link keys"
        ],
    )
    return 0


def _prune(args: argparse.Namespace, store: SpineStore, state: SpineState) -> int:
    keep_runs = args.keep_runs if args.keep_runs is not None else state.settings.keep_runs
    if keep_runs is None:
        raise ConfigurationError(
            f"spine {state.settings.name} has no retention policy; give --keep-runs N"
        )
    pruning = prune_spine(state, keep_runs)
    if pruning.removed:
        with _audit(args) as audit:
            store.save(pruning.state)
            audit.append(
                SpinePruned(
                    spine=state.settings.name,
                    keep_runs=keep_runs,
                    records_removed=pruning.removed,
                    records_kept=pruning.kept,
                    people_without_records=pruning.people_without_records,
                )
            )
    record = {
        "spine": state.settings.name,
        "keep_runs": keep_runs,
        "records_removed": pruning.removed,
        "records_kept": pruning.kept,
        "people_without_records": pruning.people_without_records,
    }
    emit(args, record, [f"{key}: {value}" for key, value in record.items()])
    return 0
