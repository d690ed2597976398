"""Build the configured trail (sink + redactor) from Settings, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.audit.chain import Hasher, load_key
from sidecar.audit.redact import Redactor
from sidecar.audit.sink import AuditSink, open_sink

if TYPE_CHECKING:
    from sidecar.serving.config import Settings


def open_trail(
    settings: Settings,
    sink: AuditSink | None = None,
    *,
    worker: int | None = None,
    workers: int | None = None,
) -> tuple[AuditSink, Redactor]:
    """The sink (the given one, else the configured file or stdout) and its redactor.

    With `workers` > 1, worker `worker` writes its own chain and checkpoint file
    (open_sink names both, and keeps the trail's manifest of workers).

    The HMAC key, when configured, keys both the chain and the redaction hashes
    (through separate derived keys).
    """
    key = load_key(settings.audit_hmac_key_file) if settings.audit_hmac_key_file else None
    hasher = Hasher(key)
    redactor = Redactor(
        settings.audit_redact,
        mode=settings.audit_redact_mode,
        key=hasher.subkey("redaction"),
        keys=settings.audit_redact_keys,
        values=settings.audit_redact_values,
    )
    if sink is None:
        sink = open_sink(
            settings.audit_file,
            hasher=hasher,
            durability=settings.audit_durability,
            rotate_bytes=settings.audit_rotate_bytes,
            rotate_age_s=settings.audit_rotate_age_s,
            checkpoints=settings.audit_checkpoints,
            checkpoint_every=settings.audit_checkpoint_every,
            checkpoint_interval_s=settings.audit_checkpoint_interval_s,
            worker=worker,
            workers=workers,
        )
    return sink, redactor
