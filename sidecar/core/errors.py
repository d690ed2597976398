"""Every error stepguard raises, as one tree.

    StepguardError
    ├── ConfigError            settings that cannot work (bad flag, bad file)
    ├── BundleError            a policy directory that cannot be loaded
    ├── InvalidRequest         a request that is not well formed (-> INVALID_ARGUMENT)
    └── AuditError             the audit trail cannot be written (-> DENY)
        └── UnencodableEvent   one event holds a value JSON cannot carry (-> DENY)

Each message says what to fix. Evaluation never raises: a Cedar error is a
DENY with diagnostics, not an exception.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.core.suggest import did_you_mean


class StepguardError(Exception):
    """Base of every stepguard error."""


class ConfigError(StepguardError):
    """A setting that cannot work."""


class ListenError(StepguardError):
    """A listener that cannot bind: names the setting and the address."""

    def __init__(self, setting: str, address: str, why: str | None) -> None:
        self.setting = setting
        self.address = address
        super().__init__(f"{setting}: cannot listen on {address}: {why or 'bind failed'}")


class BundleError(StepguardError):
    """A policy directory that cannot be loaded; names file, line and column when known."""

    def __init__(self, message: str, *, file: str = "", line: int = 0, column: int = 0) -> None:
        self.file = file
        self.line = line
        self.column = column if line else 0
        self.detail = message
        where = ":".join([file] + [str(n) for n in (line, self.column) if n]) if file else ""
        where = f"{where}: " if where else ""
        super().__init__(f"{where}{message}")


class InvalidRequest(StepguardError):
    """A malformed request; `field` is the path of the offending field.

    `near` is `(word, known names)` when the field names something unknown:
    the message then ends with the closest known names ("; did you mean X?"),
    composed here so that every refusal of a name suggests alike.
    """

    def __init__(
        self, field: str, message: str, *, near: tuple[str, Iterable[str]] | None = None
    ) -> None:
        if near is not None:
            message += did_you_mean(*near)
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")


class AuditError(StepguardError):
    """The audit trail could not record an event; decisions must fail closed."""


class UnencodableEvent(AuditError):
    """One event holds a value the trail cannot encode (a lone surrogate, an
    integer beyond 64 bits): validation should have refused the request. Not
    a failure of the trail, which stays healthy."""
