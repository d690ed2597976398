"""The fleet's settings: NATS connection, stream and names, from a YAML file and the env.

Precedence as for `serve` (sidecar/serving/config.py): flag > environment
(`STEPGUARD_<NAME>`) > config file > default. Credentials and TLS are settings
like the rest and are never taken from the command line, where `ps` shows them:
`nats_creds_file`, `nats_user` with `nats_password_file`, `nats_token_file`,
`nats_tls_ca`, `nats_tls_cert`, `nats_tls_key`.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sidecar.core import safeyaml
from sidecar.core.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# Settings that hold or name a secret: refused as flags (they would show in `ps`).
SECRET_SETTINGS = ("nats_password_file", "nats_token_file", "nats_creds_file", "nats_tls_key")


@dataclass(frozen=True, slots=True)
class FleetSettings:
    nats_servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    nats_creds_file: Path | None = None
    nats_user: str | None = None
    nats_password_file: Path | None = None
    nats_token_file: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # The JetStream stream the trail goes through, and its subjects' prefix.
    stream: str = "STEPGUARD_AUDIT"
    subject_prefix: str = "stepguard.audit"
    replicas: int = 3
    # Bytes the stream may hold (-1: the server's limit). When full, new messages
    # are refused (discard "new"), never old ones dropped: the shipper waits.
    stream_max_bytes: int = -1
    duplicate_window_s: float = 120.0
    consumer: str = "stepguard-collectors"
    watermark_bucket: str = "stepguard_watermarks"
    # Connection attempts and timeouts.
    connect_timeout_s: float = 2.0
    request_timeout_s: float = 5.0

    def validate(self) -> FleetSettings:
        for name in (self.stream, self.consumer, self.watermark_bucket):
            if not NAME.match(name):
                raise ConfigError(f"fleet setting {name!r}: use letters, digits, '_' and '-'")
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", self.subject_prefix):
            raise ConfigError(f"subject_prefix {self.subject_prefix!r}: dot-separated words")
        if self.replicas not in (1, 3, 5):
            raise ConfigError(f"replicas: {self.replicas}: use 1, 3 or 5 (3 in production)")
        if not self.nats_servers:
            raise ConfigError("nats_servers: name at least one server (nats://host:4222)")
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ConfigError("nats_tls_cert and nats_tls_key go together")
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        if self.nats_tls_ca is None and self.nats_tls_cert is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.nats_tls_ca) if self.nats_tls_ca else None)
        if self.nats_tls_cert is not None and self.nats_tls_key is not None:
            ctx.load_cert_chain(str(self.nats_tls_cert), str(self.nats_tls_key))
        return ctx

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments of nats.connect: servers, credentials, TLS."""
        opts: dict[str, Any] = {
            "servers": list(self.nats_servers),
            "connect_timeout": self.connect_timeout_s,
            "reconnect_time_wait": 0.5,
            # Finite: a first connection to no server gives up (and the caller says the
            # broker is unavailable, then tries again); a closed client is replaced.
            "max_reconnect_attempts": 10,
            "allow_reconnect": True,
        }
        if self.nats_creds_file is not None:
            opts["user_credentials"] = str(self.nats_creds_file)
        if self.nats_user is not None:
            opts["user"] = self.nats_user
            opts["password"] = _read_secret(self.nats_password_file, "nats_password_file")
        if self.nats_token_file is not None:
            opts["token"] = _read_secret(self.nats_token_file, "nats_token_file")
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts


def _read_secret(path: Path | None, what: str) -> str:
    if path is None:
        raise ConfigError(f"nats_user is set: also set {what} (a file holding the secret)")
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc}") from exc


_FIELDS = {f.name: f for f in dataclasses.fields(FleetSettings)}


def load(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **flags: Any,
) -> FleetSettings:
    """Settings from the config file's `fleet:` section (or the whole file), the
    environment (`STEPGUARD_NATS_SERVERS`...) and the flags given (None: not given)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = safeyaml.load_file(config_file) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file}: expected a mapping")
        section = loaded.get("fleet", loaded)
        if not isinstance(section, dict):
            raise ConfigError(f"config file {config_file}: `fleet` must be a mapping")
        for key, value in section.items():
            if key in _FIELDS:
                values[key] = value
    for key, value in (environ or {}).items():
        if key.startswith("STEPGUARD_"):
            name = key.removeprefix("STEPGUARD_").lower()
            if name in _FIELDS:
                values[name] = value
    for key, value in flags.items():
        if value is not None:
            if key in SECRET_SETTINGS:
                raise ConfigError(f"{key} is a secret's setting: put it in the file or env")
            values[key] = value
    return FleetSettings(**{k: _coerce(k, v) for k, v in values.items()}).validate()


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELDS[name].type)
    try:
        if name == "nats_servers":
            if isinstance(value, str):
                value = [s for s in re.split(r"[,\s]+", value) if s]
            return tuple(str(s) for s in value)
        if "Path" in kind:
            return Path(str(value)) if value not in (None, "") else None
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        return None if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"fleet setting {name}: {value!r} is not a valid value") from exc
