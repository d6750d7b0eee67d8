"""The server factory: the linkage unit as a gRPC server with mutual TLS.

Client certificates are required and verified (``require_client_auth=True``); without TLS
files the server refuses to start unless ``insecure`` is set, which binds loopback only and
takes identities from metadata (tests and development). Port reuse is off, so a second
linkage unit on the same port fails to bind instead of silently sharing its traffic. On
start, a self-test connects without a client certificate and refuses to serve if that
connection is answered (grpcio would otherwise serve certificate-less clients silently if
client authentication were ever switched off).
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from linkage_unit import matching
from linkage_unit.admission import Admission, AdmissionLimits
from linkage_unit.audit_hook import AuditReader, AuditSink
from linkage_unit.audit_log import AuditLog
from linkage_unit.blocking import BlockingSettings
from linkage_unit.checkpoints import Checkpoint, no_checkpoint
from linkage_unit.distributed import ClusterSettings, DaskExecutor
from linkage_unit.group_blocking import GroupBlockingSettings
from linkage_unit.manifest_policy import ManifestPolicy
from linkage_unit.retention import Retention
from linkage_unit.run import LinkFunction, RunManager
from linkage_unit.service import LinkageService
from linkage_unit.servicer import LinkageUnitServicer
from linkage_unit.spine import SpineStore, read_spine_key, spine_directory
from linkage_unit.storage import Storage
from linkage_unit.uploads import UploadLimits
from linkage_unit.watchdog import StreamWatchdog
from protocol.addresses import is_loopback
from protocol.errors import ConfigurationError, InvariantError, MatchingError
from protocol.pb import linkage_pb2_grpc as pb_grpc
from protocol.signing import load_public_key
from protocol.tls import TlsFiles

__all__ = ["SERVICE_NAME", "LinkageUnitServer", "ServerConfig", "create_server", "load_config"]

logger = logging.getLogger("bloomlink.linkage_unit.server")

SERVICE_NAME = "bloomlink.v1.LinkageUnit"
_MiB = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything ``bloomlink serve`` can set, by flag or TOML config file."""

    data_dir: Path
    listen: str = "127.0.0.1:50051"
    ca_certificate: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    insecure: bool = False
    # The signed audit log (default <data_dir>/audit.jsonl) and its Ed25519 key, created 0600
    # on first start (default <data_dir>/audit-signing-key.pem).
    audit_log: Path | None = None
    audit_signing_key: Path | None = None
    # Refuse uploads that come without the party's signed manifest (docs/audit.md).
    require_manifest: bool = True
    # Parties' registered manifest public keys (PEM files), e.g. ``[party_keys]`` with
    # ``moj = "moj.pub"``: with any set, a manifest must be signed by its party's key.
    party_keys: Mapping[str, Path] = field(default_factory=dict)
    # The operator's spine key (32 bytes, mode 0600; docs/spine.md): with it, spines live
    # encrypted under <data_dir>/spines and projects may join them; unset: no spines.
    spine_key: Path | None = None
    # How often to delete payloads whose retention ran out (besides at start).
    retention_check_seconds: float = 3600.0
    max_message_bytes: int = 4 * _MiB
    max_upload_bytes: int = 4096 * _MiB
    max_workers: int = 16
    max_concurrent_rpcs: int = 64
    run_workers: int = 1
    keepalive_time_seconds: int = 60
    keepalive_timeout_seconds: int = 20
    min_ping_interval_seconds: int = 30
    grace_seconds: float = 5.0
    # An upload stream that sends nothing for this long, or lasts longer than the maximum,
    # is cancelled so a slow or idle client cannot hold a worker thread; it resumes later.
    stream_idle_seconds: float = 120.0
    max_stream_seconds: float = 6 * 3600.0
    # Streams one identity (one role, or one party) may hold at once; unset: half the worker
    # threads, so one certificate can never hold them all.
    max_streams_per_identity: int | None = None
    # Calls that write audit entries (upload, fetch keys, create project, start run, refused
    # probes) draw from a per-identity bucket: this many a minute, this many in a burst.
    audited_calls_per_minute: float = 60.0
    audited_call_burst: int = 30
    # Matching on a Dask cluster (linkage_unit/distributed.py); unset: in this process. One-off
    # runs only: a run into a spine matches in this process (docs/spine.md).
    dask_scheduler: str | None = None
    dask_ca_certificate: Path | None = None
    dask_certificate: Path | None = None
    dask_private_key: Path | None = None
    dask_timeout_seconds: float = 3600.0
    dask_task_retries: int = 2
    dask_worker_memory_bytes: int = 8 << 30
    # LSH blocking shape for every run, one-off or into a spine (linkage_unit/blocking.py,
    # ``run_settings``). Unset (the default): fitted
    # per comparison to the CLKs' bit density, both sides' sizes and the run's record-level
    # threshold, for blocking recall lsh_target_recall at that threshold against comparing
    # every pair. Both set: that fixed shape for every run (docs/scale.md, 60M x 60M).
    lsh_bands: int | None = None
    lsh_bits_per_band: int | None = None
    lsh_target_recall: float = 0.999
    # Group blocking (linkage_unit/group_blocking.py) for encodings of several field groups,
    # in every run (into a spine too, its new-vs-spine pairs included):
    # candidates are pairs sharing an identical group encoding (blocks of more than
    # max_group_block_pairs pairs skipped, and counted) plus record-level LSH fitted to Dice
    # group_lsh_threshold, instead of LSH fitted to the run's own cut, where its measured
    # recall meets the target or comparing without it would take hours (``falls_back``).
    # On by default (docs/benchmarks.md says what it measured).
    group_blocking: bool = True
    group_lsh_threshold: float = 0.9
    max_group_block_pairs: int = 1_000_000
    extra_options: tuple[tuple[str, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024 or self.max_upload_bytes < 1:
            raise ConfigurationError("max_message_bytes must be >= 1024 and max_upload_bytes > 0")
        if self.retention_check_seconds <= 0:
            raise ConfigurationError("retention_check_seconds must be positive")
        if self.max_workers < 2 or self.max_concurrent_rpcs < 1 or self.run_workers < 0:
            raise ConfigurationError("max_workers >= 2, max_concurrent_rpcs >= 1, run_workers >= 0")
        if not (0 < self.stream_idle_seconds <= self.max_stream_seconds):
            raise ConfigurationError("0 < stream_idle_seconds <= max_stream_seconds")
        if not 1 <= self.stream_limit_per_identity < self.max_workers:
            raise ConfigurationError(
                "max_streams_per_identity must be at least 1 and below max_workers, so one "
                "identity cannot hold every worker thread"
            )
        if self.audited_call_burst < 1 or not self.audited_calls_per_minute > 0:
            raise ConfigurationError(
                "audited_call_burst must be at least 1 and audited_calls_per_minute positive"
            )
        tls = (self.ca_certificate, self.certificate, self.private_key)
        if not self.insecure and any(path is None for path in tls):
            raise ConfigurationError(
                "the linkage unit needs ca_certificate, certificate and private_key for mutual "
                "TLS; it will not start without them (--insecure is for local tests only)"
            )
        if self.insecure and not is_loopback(self.listen):
            raise ConfigurationError("--insecure binds loopback only (127.0.0.1, ::1, localhost)")
        dask_files = (self.dask_ca_certificate, self.dask_certificate, self.dask_private_key)
        if self.dask_scheduler is None and any(path is not None for path in dask_files):
            raise ConfigurationError("Dask TLS files are set but dask_scheduler is not")
        if self.dask_scheduler is not None:
            try:
                self.cluster_settings  # noqa: B018 - validates the Dask settings once, here
            except MatchingError as error:
                raise ConfigurationError(f"Dask settings: {error}") from None
        try:
            self.blocking_settings  # noqa: B018 - validates the LSH shape once, here
            self.group_blocking_settings  # noqa: B018 - and the group blocking settings
        except MatchingError as error:
            raise ConfigurationError(f"LSH settings: {error}") from None

    @property
    def stream_limit_per_identity(self) -> int:
        """The streams one identity may hold at once (``max_streams_per_identity``, or half
        the worker threads)."""
        if self.max_streams_per_identity is not None:
            return self.max_streams_per_identity
        return max(1, self.max_workers // 2)

    @property
    def admission_limits(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_streams=self.stream_limit_per_identity,
            audited_calls_per_minute=self.audited_calls_per_minute,
            audited_call_burst=self.audited_call_burst,
        )

    @property
    def blocking_settings(self) -> BlockingSettings:
        """The LSH shape of every run: fitted to the data unless both ``lsh_bands`` and
        ``lsh_bits_per_band`` fix it."""
        fixed = (self.lsh_bands, self.lsh_bits_per_band)
        if fixed == (None, None):
            return BlockingSettings(fit_to_data=True, target_recall=self.lsh_target_recall)
        if self.lsh_bands is None or self.lsh_bits_per_band is None:
            raise MatchingError(
                "set both lsh_bands and lsh_bits_per_band for a fixed shape, or neither for "
                "the shape fitted to the data"
            )
        if self.lsh_target_recall != BlockingSettings().target_recall:
            raise MatchingError(
                "lsh_target_recall applies to the fitted shape only; unset lsh_bands and "
                "lsh_bits_per_band to use it"
            )
        return BlockingSettings(
            bands=self.lsh_bands, bits_per_band=self.lsh_bits_per_band, fit_to_data=False
        )

    @property
    def group_blocking_settings(self) -> GroupBlockingSettings | None:
        """Group blocking for every run of a grouped encoding, or None (LSH alone)."""
        settings = GroupBlockingSettings(
            lsh_threshold=self.group_lsh_threshold,
            max_group_block_pairs=self.max_group_block_pairs,
        )
        return settings if self.group_blocking else None

    def run_settings(self, settings: matching.MatchSettings) -> matching.MatchSettings:
        """A run's settings with this LU's LSH shape and group blocking: the one place both
        one-off runs and runs into a spine take them from (``RunManager(configure=...)``)."""
        return replace(
            settings,
            blocking_settings=self.blocking_settings,
            group_blocking=self.group_blocking_settings,
        )

    @property
    def cluster_settings(self) -> ClusterSettings | None:
        """The Dask cluster the runs use, or None to match in this process."""
        if self.dask_scheduler is None:
            return None
        return ClusterSettings(
            scheduler_address=self.dask_scheduler,
            ca_certificate=self.dask_ca_certificate,
            certificate=self.dask_certificate,
            private_key=self.dask_private_key,
            task_retries=self.dask_task_retries,
            timeout_seconds=self.dask_timeout_seconds,
            connect_timeout_seconds=min(30.0, self.dask_timeout_seconds),
            worker_memory_bytes=self.dask_worker_memory_bytes,
        )

    @property
    def tls_files(self) -> TlsFiles | None:
        if self.insecure:
            return None
        if not (self.ca_certificate and self.certificate and self.private_key):
            raise InvariantError("a mutual-TLS config without its files passed validation")
        return TlsFiles(
            ca_certificate=self.ca_certificate,
            certificate=self.certificate,
            private_key=self.private_key,
        )


def _self_test_host(listen: str) -> str:
    host = listen.rsplit(":", 1)[0].strip("[]")
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def load_config(path: Path | str | None, **overrides: Any) -> ServerConfig:
    """Read a TOML config (keys are ServerConfig field names); ``overrides`` (flags) win."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigurationError(f"cannot read config {path}: {error}") from None
    known = {item.name for item in fields(ServerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigurationError(f"unknown keys in config {path}: {', '.join(unknown)}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    if "data_dir" not in values:
        raise ConfigurationError("set data_dir (--data-dir or data_dir in the config file)")
    for key in (
        "data_dir", "ca_certificate", "certificate", "private_key", "audit_log",
        "audit_signing_key", "spine_key", "dask_ca_certificate", "dask_certificate", "dask_private_key",
    ):  # fmt: skip
        if values.get(key) is not None:
            values[key] = Path(values[key])
    if isinstance(values.get("party_keys"), dict):
        values["party_keys"] = {party: Path(key) for party, key in values["party_keys"].items()}
    try:
        return ServerConfig(**values)
    except TypeError as error:
        raise ConfigurationError(f"invalid config value: {error}") from None


class LinkageUnitServer:
    """A started-or-startable linkage unit. ``start()`` returns the bound port."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        audit: AuditSink | None = None,
        link_function: LinkFunction | None = None,
        clock: Callable[[], float] = time.time,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self.config = config
        # Read first: a bad key file must stop start-up before anything is opened.
        manifest_policy = ManifestPolicy(
            require_manifest=config.require_manifest,
            party_keys={party: load_public_key(path) for party, path in config.party_keys.items()},
        )
        self.storage = Storage(config.data_dir, clock=clock, checkpoint=checkpoint)
        self.audit_log: AuditLog | None = None
        if audit is None:
            try:
                self.audit_log = AuditLog.open(
                    config.audit_log or config.data_dir / "audit.jsonl",
                    signing_key_path=config.audit_signing_key
                    or config.data_dir / "audit-signing-key.pem",
                )
            except BaseException:
                self.storage.close()
                raise
            audit = self.audit_log
        self.audit: AuditSink = audit
        # A sink given by the caller serves auditors too when it can read the log back.
        reader = audit if isinstance(audit, AuditReader) else None
        cluster = config.cluster_settings
        if link_function is None and cluster is not None:
            link_function = functools.partial(matching.link, executor=DaskExecutor(cluster))
        self.runs = RunManager(
            self.storage,
            self.audit,
            workers=config.run_workers,
            link_function=link_function,
            configure=config.run_settings,
            retention=Retention(self.storage, self.audit, clock=clock, checkpoint=checkpoint),
            checkpoint=checkpoint,
            spines=None
            if config.spine_key is None
            else SpineStore(spine_directory(config.data_dir), read_spine_key(config.spine_key)),
        )
        self.service = LinkageService(
            self.storage,
            self.audit,
            self.runs,
            limits=UploadLimits(max_upload_bytes=config.max_upload_bytes),
            audit_reader=reader,
            manifest_policy=manifest_policy,
            admission=Admission(config.admission_limits),
            clock=clock,
        )
        self._retention_stop = threading.Event()
        self._retention_thread: threading.Thread | None = None
        self.health = health.HealthServicer()
        self.port: int | None = None
        options: list[tuple[str, int]] = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.keepalive_time_ms", config.keepalive_time_seconds * 1000),
            ("grpc.keepalive_timeout_ms", config.keepalive_timeout_seconds * 1000),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                config.min_ping_interval_seconds * 1000,
            ),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_metadata_size", 16 * 1024),
            *config.extra_options,
        ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers),
            options=options,
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        pb_grpc.add_LinkageUnitServicer_to_server(
            LinkageUnitServicer(
                self.service,
                insecure=config.insecure,
                watchdog=StreamWatchdog(
                    idle_seconds=config.stream_idle_seconds,
                    max_seconds=config.max_stream_seconds,
                ),
            ),
            self._server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)

    def _credentials(self) -> grpc.ServerCredentials:
        files = self.config.tls_files
        if files is None:
            raise InvariantError("TLS credentials asked for in insecure mode")
        ca, chain, key = files.read()
        # require_client_auth defaults to False in grpcio, which silently serves clients with
        # no certificate at all; it is always True here.
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=ca, require_client_auth=True
        )

    def start(self) -> int:
        """Bind, resume unfinished runs, start serving; return the bound port."""
        try:
            if self.config.insecure:
                logger.warning(
                    "INSECURE MODE: plaintext on %s, identities taken from request metadata "
                    "without any proof. Never use this with real data.",
                    self.config.listen,
                )
                port = int(self._server.add_insecure_port(self.config.listen))
            else:
                port = int(self._server.add_secure_port(self.config.listen, self._credentials()))
        except RuntimeError:
            self.close_storage()
            raise ConfigurationError(
                f"cannot listen on {self.config.listen}: the address is in use (is another "
                "linkage unit running?) or not available on this host"
            ) from None
        self.port = port
        self._server.start()
        if not self.config.insecure:
            try:
                require_client_certificates(port, host=_self_test_host(self.config.listen))
            except ConfigurationError:
                self._server.stop(0)
                self.close_storage()
                raise
        self.service.start()
        self._retention_thread = threading.Thread(
            target=self._retention_loop, name="bloomlink-retention", daemon=True
        )
        self._retention_thread.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "linkage unit serving listen=%s port=%d mutual_tls=%s data_dir=%s matching=%s",
            self.config.listen,
            port,
            not self.config.insecure,
            self.config.data_dir,
            self.config.dask_scheduler or "in-process",
        )
        return port

    def _retention_loop(self) -> None:
        while not self._retention_stop.wait(self.config.retention_check_seconds):
            try:
                purged = self.service.maintain()
            except Exception:
                logger.exception("retention check failed; it is retried at the next interval")
                continue
            if purged:
                logger.info("retention deleted payloads=%d", purged)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: refuse new calls, let in-flight ones finish within the grace period,
        interrupt runs (they resume on the next start), close the database."""
        self.health.enter_graceful_shutdown()
        self._server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.runs.shutdown(wait=True)
        self.close_storage()
        if self.port is not None:  # a start that failed is reported by its error alone
            logger.info("linkage unit stopped")

    def close_storage(self) -> None:
        self._retention_stop.set()
        self.runs.shutdown(wait=False)
        self.storage.close()
        if self.audit_log is not None:
            self.audit_log.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self._server.wait_for_termination(timeout))


def require_client_certificates(port: int, *, host: str = "127.0.0.1") -> None:
    """The start-up self-test: raise ``ConfigurationError`` if the TLS server on ``port``
    answers a client that presents no certificate (mutual TLS not enforced)."""
    if serves_without_client_certificate(port, host=host):
        raise ConfigurationError(
            "self-test failed: the linkage unit answered a client without a certificate; "
            "mutual TLS is not enforced, so it refuses to start"
        )


def serves_without_client_certificate(
    port: int, *, host: str = "127.0.0.1", timeout: float = 3.0
) -> bool:
    """Whether a TLS client presenting no certificate gets an HTTP/2 answer on ``port``.

    Only whether the server demands a certificate is tested, so the server certificate is not
    verified here. With client authentication the server closes the connection after the
    handshake; without it, it answers the HTTP/2 preface with a SETTINGS frame (type 4).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw) as connection:
                connection.sendall(preface)
                answer = connection.recv(9)
    except (OSError, ssl.SSLError):
        return False
    return len(answer) >= 4 and answer[3] == 4


def create_server(
    config: ServerConfig,
    *,
    audit: AuditSink | None = None,
    link_function: LinkFunction | None = None,
    clock: Callable[[], float] = time.time,
    checkpoint: Checkpoint = no_checkpoint,
) -> LinkageUnitServer:
    """Build (not start) a linkage unit server from its config. ``clock`` is the wall clock
    every stored time is read from; ``checkpoint`` the fault-injection hook (checkpoints.py)."""
    return LinkageUnitServer(
        config, audit=audit, link_function=link_function, clock=clock, checkpoint=checkpoint
    )
