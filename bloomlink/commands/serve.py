"""``bloomlink serve``: run the linkage unit (gRPC, mutual TLS) until SIGTERM or SIGINT.

``serve --example-config`` prints a documented ``lu.toml`` (``bloomlink/data/lu.example.toml``,
also at the repository root) that ``serve --config`` accepts as it is. Logs go to stderr, or
to ``--log-file``, as text or JSON lines (``--log-format json``). At start the linkage unit
checks that a client without a certificate is refused; gRPC's own report of that refused
handshake is kept out of the log (cli.py sets ``GRPC_VERBOSITY=ERROR`` unless you set it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from types import FrameType

from linkage_unit.allocator import pin_mmap_threshold
from linkage_unit.server import create_server, load_config
from protocol.errors import ConfigurationError

NAME = "serve"
HELP = "run the linkage unit service (mutual TLS; config file and/or flags)"

logger = logging.getLogger("bloomlink.serve")


def example_config() -> str:
    """The documented example ``lu.toml``."""
    return resources.files("bloomlink").joinpath("data/lu.example.toml").read_text("utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="TOML file; keys are the long flag names with _"
    )
    parser.add_argument(
        "--example-config",
        action="store_true",
        help="print a documented lu.toml (works as is beside certs init --dir pki) and exit",
    )
    parser.add_argument("--listen", help="address to bind, host:port (default 127.0.0.1:50051)")
    parser.add_argument("--data-dir", type=Path, help="where state and payloads live")
    parser.add_argument("--ca-certificate", type=Path, help="CA that issued client certificates")
    parser.add_argument("--certificate", type=Path, help="the linkage unit's certificate (PEM)")
    parser.add_argument("--private-key", type=Path, help="the linkage unit's private key (PEM)")
    parser.add_argument(
        "--audit-log", type=Path, help="audit JSON-lines file (default in data dir)"
    )
    parser.add_argument(
        "--spine-key",
        type=Path,
        help="the operator's spine key file (32 bytes, 0600; `bloomlink spine keygen`): "
        "spines are kept encrypted under it (docs/spine.md)",
    )
    parser.add_argument("--max-message-bytes", type=int, help="largest single gRPC message")
    parser.add_argument("--max-upload-bytes", type=int, help="largest payload / upload stream")
    parser.add_argument("--max-workers", type=int, help="RPC worker threads")
    parser.add_argument("--max-concurrent-rpcs", type=int, help="beyond this: RESOURCE_EXHAUSTED")
    parser.add_argument("--run-workers", type=int, help="run threads (0 holds runs queued)")
    parser.add_argument("--keepalive-time-seconds", type=int)
    parser.add_argument("--keepalive-timeout-seconds", type=int)
    parser.add_argument("--min-ping-interval-seconds", type=int)
    parser.add_argument(
        "--stream-idle-seconds", type=float, help="cut an upload stream silent for this long"
    )
    parser.add_argument("--max-stream-seconds", type=float, help="cut an upload stream this old")
    parser.add_argument("--grace-seconds", type=float, help="shutdown grace for in-flight calls")
    parser.add_argument(
        "--max-streams-per-identity",
        type=int,
        help="streams one certificate may hold at once (default: half of --max-workers)",
    )
    parser.add_argument(
        "--audited-calls-per-minute", type=float, help="audited calls per certificate (60)"
    )
    parser.add_argument(
        "--audited-call-burst", type=int, help="audited calls per certificate at once (30)"
    )
    parser.add_argument(
        "--dask-scheduler",
        help="run matching on this Dask cluster, e.g. tls://scheduler:8786 (default: in-process)",
    )
    parser.add_argument("--dask-ca-certificate", type=Path, help="CA for Dask's own mutual TLS")
    parser.add_argument("--dask-certificate", type=Path, help="client certificate for Dask (PEM)")
    parser.add_argument("--dask-private-key", type=Path, help="its private key (PEM)")
    parser.add_argument(
        "--dask-timeout-seconds", type=float, help="a compare on Dask fails after this (3600)"
    )
    parser.add_argument("--dask-task-retries", type=int, help="resubmits of a failed task (2)")
    parser.add_argument(
        "--dask-worker-memory-bytes", type=int, help="memory one Dask worker may use (8 GiB)"
    )
    parser.add_argument(
        "--lsh-bands",
        type=int,
        help="LSH blocking bands of a fixed shape, with --lsh-bits-per-band (unset: the shape "
        "is fitted to each run's data and threshold)",
    )
    parser.add_argument(
        "--lsh-bits-per-band", type=int, help="LSH bits per band of a fixed shape (20 at 60M)"
    )
    parser.add_argument(
        "--lsh-target-recall",
        type=float,
        help="blocking recall the fitted LSH shape aims for at the run's threshold (0.999)",
    )
    parser.add_argument(
        "--group-blocking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="for encodings of several field groups: candidates from identical group encodings "
        "plus LSH at a high cut, where its measured recall meets the target or comparing "
        "without it would take hours (on by default; docs/benchmarks.md)",
    )
    parser.add_argument(
        "--group-lsh-threshold",
        type=float,
        help="record-level Dice the LSH part of group blocking is fitted to (0.9)",
    )
    parser.add_argument(
        "--max-group-block-pairs",
        type=int,
        help="group blocking skips (and counts) a block of more pairs than this (1000000)",
    )
    parser.add_argument(
        "--party-key",
        action="append",
        metavar="PARTY=PEM",
        help="a party's registered manifest public key (repeat per party; config: [party_keys])",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="RISK: plaintext and unauthenticated identities from metadata; loopback only, "
        "for local tests, never with real data",
    )


def run(args: argparse.Namespace) -> int:
    if args.example_config:
        sys.stdout.write(example_config())
        return 0
    names = (
        "listen", "data_dir", "spine_key", "ca_certificate", "certificate", "private_key", "audit_log",
        "max_message_bytes", "max_upload_bytes", "max_workers", "max_concurrent_rpcs",
        "run_workers", "keepalive_time_seconds", "keepalive_timeout_seconds",
        "min_ping_interval_seconds", "grace_seconds", "insecure", "stream_idle_seconds",
        "max_stream_seconds", "max_streams_per_identity", "audited_calls_per_minute",
        "audited_call_burst", "dask_scheduler", "dask_ca_certificate", "dask_certificate",
        "dask_private_key", "dask_timeout_seconds", "dask_task_retries",
        "dask_worker_memory_bytes", "lsh_bands", "lsh_bits_per_band", "lsh_target_recall",
        "group_blocking", "group_lsh_threshold", "max_group_block_pairs",
    )  # fmt: skip
    overrides = {name: getattr(args, name) for name in names}
    if args.party_key:
        overrides["party_keys"] = dict(_party_key(item) for item in args.party_key)
    config = load_config(args.config, **overrides)
    # Large temporaries go back to the system when freed (linkage_unit/allocator.py).
    pin_mmap_threshold()
    server = create_server(config)
    stopping = threading.Event()

    def on_signal(number: int, frame: FrameType | None) -> None:
        logger.info("received %s; shutting down gracefully", signal.Signals(number).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        port = server.start()
        print(f"linkage unit listening on port {port}", flush=True)
        if not config.insecure:
            logger.info(
                "mutual TLS self-check passed: a client without a certificate was refused "
                "(gRPC's own report of that handshake is hidden at GRPC_VERBOSITY=ERROR)"
            )
        stopping.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    return 0


def _party_key(item: str) -> tuple[str, Path]:
    party, separator, path = item.partition("=")
    if not separator or not party or not path:
        raise ConfigurationError(f"--party-key wants PARTY=PEM, got {item!r}")
    return party, Path(path)
