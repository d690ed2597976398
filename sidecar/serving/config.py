"""Settings: one frozen object built from flags, an optional YAML file and the environment.

Precedence: command-line flag > environment (`STEPGUARD_<NAME>`) > config
file > default. Nothing else in stepguard reads the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sidecar.core import safeyaml
from sidecar.core.errors import ConfigError
from sidecar.core.model import PolicyErrors
from sidecar.core.validate import Limits

if TYPE_CHECKING:
    from sidecar.serving.authzen.guard import HttpLimits

SERVER_MODES = ("sync", "asyncio")
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True, slots=True)
class Settings:
    policies: Path = Path("policies")
    # host:port to listen on; None disables TCP. Loopback by default, never all
    # interfaces unless asked.
    listen: str | None = "127.0.0.1:50051"
    socket: Path | None = None
    metrics_listen: str | None = "127.0.0.1:9464"
    # host:port of the OpenID AuthZEN HTTP API (docs/authzen.md); off by default.
    # Plain HTTP with no caller authentication, so loopback only.
    authzen_listen: str | None = None
    # Bounds on AuthZEN HTTP connections (sidecar/serving/authzen/guard.py, docs/authzen.md):
    # at most this many open (one more is answered 503 with Retry-After), the
    # header block within header_timeout_s of its first byte (TLS handshake
    # included), the body within body_timeout_s of the headers, idle keep-alive
    # connections closed after idle_timeout_s.
    authzen_max_connections: int = 1024
    authzen_header_timeout_s: float = 10.0
    authzen_body_timeout_s: float = 30.0
    authzen_idle_timeout_s: float = 60.0
    audit_file: str = "-"
    grace_s: float = 10.0
    # Threads of each worker's gRPC server (and of its AuthZEN server). Was
    # called `workers` before worker processes existed: that key is refused.
    threads: int = 16
    # Worker processes (sidecar/serving/supervisor.py, docs/deployment.md): None
    # is the usable cores of the container's CPU quota (usable_cores()), or 1
    # with the trail on stdout. One worker serves in the `serve` process itself,
    # as before workers existed.
    worker_processes: int | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch_bytes: int = 8 * 1024 * 1024
    # Hot reload (sidecar/serving/watch.py): poll the policy directory and swap in a new
    # bundle when its files change; a broken change is refused.
    watch: bool = False
    watch_interval_s: float = 1.0
    # The audit trail (docs/audit.md). Durability: "flush" = each event is written
    # to the OS before its answer leaves (survives a killed sidecar); "fsync" =
    # also on disk (survives power loss). There is no setting without a trail.
    audit_durability: str = "flush"
    audit_rotate_bytes: int = 64 * 1024 * 1024  # 0: never rotate by size
    audit_rotate_age_s: float = 24 * 3600.0  # 0: never rotate by age
    audit_hmac_key_file: Path | None = None  # keys the hash chain and redaction hashes
    audit_redact: tuple[str, ...] = ()  # extra dotted paths, e.g. context.approval.ticket
    audit_redact_mode: str = "hash"  # or "remove"
    # Signed checkpoints of the file trail, appended to a file the trail's writer
    # cannot roll back (docs/audit.md): every N events or T seconds, at rotation and
    # close. The sidecar refuses to write a trail behind the last one.
    audit_checkpoints: Path | None = None
    audit_checkpoint_every: int = 1000
    audit_checkpoint_interval_s: float = 10.0
    # Extra regular expressions (docs/audit.md "Redaction"): key names whose
    # values are replaced (searched, case-insensitive), and string values that
    # are replaced wherever they appear (searched).
    audit_redact_keys: tuple[str, ...] = ()
    audit_redact_values: tuple[str, ...] = ()
    # TLS on the TCP listener (the Unix socket stays local and plaintext); with
    # a client CA, mutual TLS. Files are re-read when they change (sidecar/serving/tls.py).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Deny any request whose principal is not Workload::"<the caller's SPIFFE ID>".
    bind_workload_identity: bool = False
    # The decision cache (sidecar/decision/cache.py, docs/performance.md): bounded in
    # entries and in estimated bytes; 0 entries turns it off.
    cache_max_entries: int = 100_000
    cache_max_bytes: int = 64 * 1024 * 1024
    # Granularity of `context.now`: the clock rounded down to it, never back
    # across the request's own time bound. Requests in one granule share a
    # cache entry when the policies read `context.now`.
    now_granularity_ms: int = 1000
    # The gRPC server: "asyncio" (grpc.aio, decisions on its event loop) or
    # "sync" (a thread pool); docs/performance.md measures both and says why
    # asyncio is the default.
    server_mode: str = "asyncio"
    # AuthorizeStream slots (sidecar/serving/streams.py, docs/api.md): at most workers / 2
    # open, at most stream_max_per_caller per caller (0: half of the limit, at
    # least 1), and a stream with no request for stream_idle_timeout_s is closed.
    stream_max_per_caller: int = 0
    stream_idle_timeout_s: float = 60.0
    # The asyncio server's event loop: "uvloop" (libuv; about 10% less server CPU
    # per decision, docs/performance.md) or "asyncio" (the standard library's).
    event_loop: str = "uvloop"
    # What a policy that errors does (docs/api.md, "Policies that error"):
    # "deny" (default) answers DENY when any policy that could apply errored;
    # "cedar" keeps Cedar's semantics, where the erroring policy is skipped
    # (so a forbid that errors lets a permit through).
    policy_errors: PolicyErrors = PolicyErrors.DENY
    # For demonstrations and tests outside Python only (docs/deployment.md, "A
    # fixed clock"): every request is decided as if at this time, whatever the
    # real one. Refused unless non_production is true; while on, the start-up
    # log warns and every decision event says so in its `note` (docs/audit.md).
    fixed_clock: datetime | None = None
    non_production: bool = False

    def __post_init__(self) -> None:
        if self.listen is None and self.socket is None:
            raise ConfigError("nothing to listen on: give --listen HOST:PORT and/or --socket PATH")
        for name in ("listen", "metrics_listen", "authzen_listen"):
            value = getattr(self, name)
            if value is not None:
                split_host_port(value, name)
        if (
            self.authzen_listen is not None
            and self.tls_cert is None
            and not _loopback(self.authzen_listen)
        ):
            raise ConfigError(
                f"authzen_listen: {self.authzen_listen!r} is not a loopback address; without "
                "TLS the AuthZEN API serves 127.0.0.1, [::1] or localhost only: give "
                "--tls-cert and --tls-key (and --tls-client-ca to authenticate callers) "
                "to serve HTTPS on other addresses"
            )
        if self.authzen_max_connections < 1:
            raise ConfigError(
                f"authzen_max_connections must be at least 1, got {self.authzen_max_connections}"
            )
        for name in (
            "authzen_header_timeout_s",
            "authzen_body_timeout_s",
            "authzen_idle_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.worker_processes is not None and self.worker_processes < 1:
            raise ConfigError(f"workers must be at least 1, got {self.worker_processes}")
        if (self.worker_processes or 1) > 1 and self.audit_file == "-":
            n = self.worker_processes
            raise ConfigError(
                f"--audit-file - (stdout) takes one writer: with {n} worker processes "
                "give --audit-file PATH (worker i writes its own chain, PATH's stem + .w<i>), or "
                "--workers 1"
            )
        if self.watch_interval_s <= 0:
            raise ConfigError(f"watch_interval_s must be positive, got {self.watch_interval_s}")
        if self.stream_max_per_caller < 0:
            raise ConfigError(
                "stream_max_per_caller must not be negative (0: half of the stream limit), "
                f"got {self.stream_max_per_caller}"
            )
        if not self.stream_idle_timeout_s > 0:
            raise ConfigError(
                f"stream_idle_timeout_s must be positive, got {self.stream_idle_timeout_s}"
            )
        if self.grace_s < 0:
            raise ConfigError(f"grace must not be negative, got {self.grace_s}")
        for name in ("max_request_bytes", "max_attribute_depth", "max_batch_items"):
            if getattr(self.limits, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        self._check_audit()
        self._check_tls()
        self._check_cache()
        if self.fixed_clock is not None and not self.non_production:
            raise ConfigError(
                "fixed_clock: a fixed clock decides every request as if at one time (business "
                "hours, approval ages and expiries stop moving), which no production sidecar "
                "may do; for a demonstration or a test, also give --non-production "
                "(non_production: true, STEPGUARD_NON_PRODUCTION=true)"
            )
        if self.fixed_clock is not None and self.fixed_clock.tzinfo is None:
            raise ConfigError("fixed_clock: give a time with its UTC offset, e.g. ...Z")

    @property
    def workers(self) -> int:
        """The worker processes to run: as configured, else the usable cores.

        A trail on stdout has one writer, so without a configured number it is 1.
        """
        if self.worker_processes is not None:
            return self.worker_processes
        return 1 if self.audit_file == "-" else usable_cores()

    @property
    def authzen_http(self) -> HttpLimits:
        """The AuthZEN listener's connection bounds."""
        from sidecar.serving.authzen.guard import HttpLimits

        return HttpLimits(
            max_connections=self.authzen_max_connections,
            header_timeout_s=self.authzen_header_timeout_s,
            body_timeout_s=self.authzen_body_timeout_s,
            idle_timeout_s=self.authzen_idle_timeout_s,
        )

    def _check_cache(self) -> None:
        if self.cache_max_entries < 0 or self.cache_max_bytes < 1:
            raise ConfigError(
                "cache_max_entries must not be negative (0 turns the cache off) and "
                "cache_max_bytes must be at least 1"
            )
        if self.server_mode not in SERVER_MODES:
            raise ConfigError(
                f"server_mode must be one of {', '.join(SERVER_MODES)}, got {self.server_mode!r}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )
        if not 1 <= self.now_granularity_ms <= 60_000:
            raise ConfigError(
                f"now_granularity_ms must be between 1 (Cedar's resolution) and 60000, "
                f"got {self.now_granularity_ms}"
            )

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
        if self.tls_cert is not None and self.listen is None:
            raise ConfigError("TLS applies to the TCP listener: give --listen HOST:PORT too")
        if self.bind_workload_identity and self.tls_client_ca is None:
            raise ConfigError(
                "--bind-workload-identity takes the caller's identity from its client "
                "certificate: give --tls-cert, --tls-key and --tls-client-ca too"
            )

    def _check_audit(self) -> None:
        from sidecar.audit.commit import DURABILITIES, durability_problem
        from sidecar.audit.redact import MODES, Redactor

        if self.audit_durability not in DURABILITIES:
            raise ConfigError(durability_problem(self.audit_durability))
        if self.audit_redact_mode not in MODES:
            raise ConfigError(f"audit_redact_mode must be one of {', '.join(MODES)}")
        Redactor(keys=self.audit_redact_keys, values=self.audit_redact_values)  # compiles them
        if self.audit_rotate_bytes < 0 or self.audit_rotate_age_s < 0:
            raise ConfigError("audit_rotate_bytes and audit_rotate_age_s must not be negative")
        if self.audit_checkpoint_every < 1 or self.audit_checkpoint_interval_s <= 0:
            raise ConfigError(
                "audit_checkpoint_every must be at least 1 and audit_checkpoint_interval_s positive"
            )
        if self.audit_checkpoints is not None and self.audit_file == "-":
            raise ConfigError(
                "audit_checkpoints pin a file trail: give audit_file a path (not -) with them"
            )


def usable_cores(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    affinity: int | None = None,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> int:
    """The cores this process may use: its CPU quota rounded up, at most its CPU affinity.

    A container limited to 1.5 CPUs on a 64-core node gets 2, not 64: the
    quota is cgroup v2 `cpu.max` ("QUOTA PERIOD", or "max"; the tightest of
    this process's cgroup and its parents, found from /proc/self/cgroup when
    the cgroup namespace is not private) or cgroup v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (-1: none). At least 1.
    """
    import math
    import os

    cores = affinity if affinity is not None else len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cgroup_v2_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The cgroup v2 directories that bound this process: the root, its own, its parents."""
    dirs = [root]
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        if line.startswith("0::/") and line.strip() != "0::/":
            own = root / line.removeprefix("0::/").strip()
            dirs += [own, *(p for p in own.parents if p.is_relative_to(root) and p != root)]
    return dirs


def _cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The CPU quota in cores, or None when there is none (or it cannot be read)."""
    quotas: list[float] = []
    found_v2 = False
    for directory in _cgroup_v2_dirs(root, proc_cgroup):
        try:
            text = (directory / "cpu.max").read_text().split()
        except OSError:
            continue
        found_v2 = True
        try:
            if len(text) == 2 and text[0] != "max" and int(text[1]) > 0:
                quotas.append(int(text[0]) / int(text[1]))
        except ValueError:
            continue
    if found_v2:
        return min(quotas, default=None)
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def split_host_port(value: str, name: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: {value!r} is not HOST:PORT (for example 127.0.0.1:50051)")
    return host.strip("[]"), int(port)


def _loopback(value: str) -> bool:
    host, _ = split_host_port(value)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_OFF = {"", "none", "off", "false"}
# Variables meant for the sidecar's clients, not for `serve`: the integrations
# read STEPGUARD_ADDRESS (the chart sets it in worker containers, which may run
# the sidecar's image too), so the server leaves it alone instead of refusing it.
CLIENT_ENV = frozenset({"STEPGUARD_ADDRESS"})
_LIMIT_KEYS = {f.name for f in dataclasses.fields(Limits)}


def build_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge the three sources; values are strings from env and file, typed on the way in."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = safeyaml.load_file(config_file) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must be a mapping of settings")
        merged.update({k.replace("-", "_"): v for k, v in loaded.items()})
    for key, value in (environ or {}).items():
        if key.startswith("STEPGUARD_") and key not in CLIENT_ENV:
            merged[key.removeprefix("STEPGUARD_").lower()] = value
    merged.update({k: v for k, v in flags.items() if v is not None})
    return _typed(merged)


def _flag(name: str, value: Any) -> bool:
    """A boolean from a flag, YAML or an environment string."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: {value!r} is not a boolean (true or false)")


def _rfc3339(name: str, value: Any) -> datetime:
    """An RFC 3339 time with its offset (YAML may have parsed it already: naive means UTC)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or "T" not in text.upper() or parsed.tzinfo is None:
        raise ConfigError(
            f"{name}: {text!r} is not an RFC 3339 time with an offset "
            "(for example 2026-11-25T10:00:00Z)"
        )
    return parsed


# Settings that were renamed: their old key is refused, never read with a new meaning.
RENAMED = {
    "workers": (
        "`workers` set the gRPC threads and is now `threads` (--threads, STEPGUARD_THREADS); "
        "the number of worker processes is `worker_processes` (--workers, "
        "STEPGUARD_WORKER_PROCESSES)"
    ),
}


def _typed(raw: Mapping[str, Any]) -> Settings:
    for old, why in RENAMED.items():
        if old in raw:
            raise ConfigError(f"the setting {old!r} was renamed: {why}")
    known = {f.name for f in dataclasses.fields(Settings)} | _LIMIT_KEYS
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    limits: dict[str, int] = {}
    try:
        for key, value in raw.items():
            if key in _LIMIT_KEYS:
                limits[key] = int(value)
            elif key in ("listen", "metrics_listen", "authzen_listen"):
                kwargs[key] = None if str(value).lower() in _OFF else str(value)
            elif key == "socket":
                kwargs[key] = None if str(value).lower() in _OFF else Path(value)
            elif key == "policies":
                kwargs[key] = Path(value)
            elif key in ("tls_cert", "tls_key", "tls_client_ca"):
                kwargs[key] = None if str(value).lower() in _OFF else Path(value)
            elif key in ("bind_workload_identity", "watch"):
                kwargs[key] = _flag(key, value)
            elif key in ("watch_interval_s", "stream_idle_timeout_s"):
                kwargs[key] = float(value)
            elif key in ("audit_hmac_key_file", "audit_checkpoints"):
                kwargs[key] = None if str(value).lower() in _OFF else Path(value)
            elif key == "audit_redact":
                items = value.split(",") if isinstance(value, str) else list(value)
                kwargs[key] = tuple(str(v).strip() for v in items if str(v).strip())
            elif key == "fixed_clock":
                kwargs[key] = None if str(value).lower() in _OFF else _rfc3339(key, value)
            elif key == "non_production":
                kwargs[key] = _flag(key, value)
            elif key == "policy_errors":
                kwargs[key] = (
                    value if isinstance(value, PolicyErrors) else PolicyErrors.parse(str(value))
                )
            elif key in ("audit_redact_keys", "audit_redact_values"):
                # Regular expressions may hold commas: one per line from the environment.
                items = value.splitlines() if isinstance(value, str) else list(value)
                kwargs[key] = tuple(str(v) for v in items if str(v).strip())
            elif key in ("audit_durability", "audit_redact_mode"):
                kwargs[key] = str(value).strip().lower()
            elif key in ("audit_rotate_age_s", "audit_checkpoint_interval_s"):
                kwargs[key] = float(value)
            elif key in ("audit_rotate_bytes", "audit_checkpoint_every"):
                kwargs[key] = int(value)
            elif key in (
                "grace_s",
                "authzen_header_timeout_s",
                "authzen_body_timeout_s",
                "authzen_idle_timeout_s",
            ):
                kwargs[key] = float(value)
            elif key == "worker_processes":
                auto = value is None or str(value).strip().lower() in ("", "auto")
                kwargs[key] = None if auto else int(value)
            elif key in (
                "threads",
                "max_batch_bytes",
                "cache_max_entries",
                "cache_max_bytes",
                "now_granularity_ms",
                "stream_max_per_caller",
                "authzen_max_connections",
            ):
                kwargs[key] = int(value)
            else:
                kwargs[key] = value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting value: {exc}") from exc
    return Settings(**kwargs, limits=Limits(**limits))
