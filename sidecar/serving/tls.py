"""TLS for the servers, with certificates that follow their files; TLS for clients.

SPIRE's helper and cert-manager rotate a workload's certificate, key and CA
bundle by rewriting files. Before every TLS handshake the servers ask
`CertificateReloader` for the set to use: gRPC through `fetch`, the AuthZEN
HTTPS listener through `server_context`. It answers from a cheap `stat` of
the three files and reads them only when that changed. A new set replaces
the one in use only after Python's own TLS stack has accepted it (the key
matches the certificate, the CA bundle parses), so a half-written rotation
(new certificate, old key) keeps the previous set in service until the files
settle. Connections already open keep their session: no call is dropped.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from sidecar.core.errors import ConfigError

log = logging.getLogger(__name__)

# Files are re-read at least this often even when `stat` shows no change, so a
# rewrite that keeps size and modification time is still seen.
RECHECK_S = 10.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate chain, key and (for mutual TLS) client CA live."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        extra = () if self.client_ca is None else (self.client_ca,)
        return (self.cert, self.key, *extra)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One consistent set of PEM bytes, checked to work together.

    `context` is the standard library's server context built from them
    during the check (the HTTPS listener serves with it); it takes no part
    in comparing two sets.
    """

    cert: bytes
    key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.client_ca
        )


def read_material(files: TlsFiles) -> TlsMaterial:
    """Read and check the files; raise ConfigError saying which file is wrong and how.

    The check is the standard library's TLS stack: `load_cert_chain` refuses a
    key that does not belong to the certificate. The files are read again
    afterwards; a change in between (a rotation in progress) is an error too,
    and the caller tries again later.
    """
    before = _read_all(files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(files.cert, files.key, password=_no_password)
    except (ssl.SSLError, OSError, TypeError) as exc:
        raise ConfigError(
            f"TLS certificate {files.cert} and key {files.key} are not a usable pair "
            f"(PEM certificate chain and its unencrypted private key): {exc}"
        ) from exc
    if before.client_ca is not None:
        try:
            context.load_verify_locations(cadata=before.client_ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"TLS client CA {files.client_ca} is not a PEM bundle of CA certificates: {exc}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no connection
    if _read_all(files) != before:
        raise ConfigError(
            f"TLS files changed while being read ({', '.join(map(str, files.paths()))})"
        )
    return replace(before, context=context)


def _read_all(files: TlsFiles) -> TlsMaterial:
    def read(path: Path, what: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN " not in data:
            raise ConfigError(f"TLS {what} {path} holds no PEM block")
        return data

    ca = None if files.client_ca is None else read(files.client_ca, "client CA")
    return TlsMaterial(read(files.cert, "certificate"), read(files.key, "key"), ca)


def _no_password() -> bytes:
    raise ConfigError("the TLS private key is encrypted; give stepguard an unencrypted key")


Signature = tuple[tuple[int, int, int, int], ...]


class CertificateReloader:
    """The certificate set gRPC serves, swapped when its files change.

    `fetch` and `server_context` run on the handshake path of every new
    connection: they never raise and never block on more than three small
    file reads. Each server sees a new set at its next handshake, whichever
    of them noticed the change first.
    """

    def __init__(
        self,
        files: TlsFiles,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = files
        self._recheck_s = recheck_s
        self._clock = clock
        self._lock = threading.Lock()
        self._material = read_material(files)  # startup: unusable files are a ConfigError
        self._seen: Signature | None = self._signature()
        self._checked = clock()
        self._warned: Signature | None = None
        self.generation = 1  # bumped on every swap; read by tests and logs
        self._grpc_generation = 1  # the set gRPC was last given

    @property
    def material(self) -> TlsMaterial:
        return self._material

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that ask `fetch` before each handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._material.configuration(),
            self.fetch,  # type: ignore[arg-type]  # grpc-stubs omit the documented None
            require_client_authentication=self.files.client_ca is not None,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's question: a new configuration when a new valid set is in use, else None."""
        self.refresh()
        with self._lock:
            if self._grpc_generation == self.generation:
                return None
            self._grpc_generation = self.generation
            return self._material.configuration()

    def server_context(self) -> ssl.SSLContext:
        """The context an HTTPS server should wrap its next connection with."""
        self.refresh()
        context = self._material.context
        assert context is not None  # read_material always builds it
        return context

    def refresh(self) -> None:
        """Switch to the files' set if they changed and hold a valid one; never raises."""
        try:
            self._refresh()
        except Exception:  # the handshake path must not see an exception
            log.exception("TLS reload check failed; keeping the certificates in use")

    def _refresh(self) -> None:
        try:
            signature = self._signature()
        except OSError:
            signature = None  # a file is missing mid-rotation: read (and fail) below
        now = self._clock()
        if signature == self._seen and now - self._checked < self._recheck_s:
            return
        with self._lock:
            if signature == self._seen and now - self._checked < self._recheck_s:
                return  # another handshake did the work meanwhile
            try:
                material = read_material(self.files)
            except ConfigError as exc:
                if signature != self._warned:
                    self._warned = signature
                    log.warning("TLS files not reloaded, still serving the previous set: %s", exc)
                return
            self._seen, self._checked, self._warned = signature, now, None
            if material == self._material:
                return
            self._material = material
            self.generation += 1
            log.info(
                "TLS certificates reloaded from %s (generation %d)",
                ", ".join(map(str, self.files.paths())),
                self.generation,
            )

    def _signature(self) -> Signature:
        out = []
        for path in self.files.paths():
            st = os.stat(path)  # follows symlinks: a Secret volume's ..data swap shows
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)
