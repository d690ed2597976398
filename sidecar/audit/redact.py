"""Redaction: secrets never reach the trail.

Two rules, applied to every event before it is chained:

1. By name (always on): in `context` and in the attributes of request
   entities, at any depth, a key whose name contains secret, token,
   password/passwd, passphrase, credential, api_key/apikey, private_key,
   authorization, cookie, session_id or bearer (case-insensitive) has its
   value replaced.
2. By path (configured): dotted paths from the event root, `*` matching any
   one key or list item, e.g. `context.approval.ticket` or
   `entities.*.attrs.email`.

A replaced value becomes `"redacted:hmac-sha256:<32 hex>"`, a keyed hash of its
canonical JSON: equal values stay comparable, but nobody without the key can
test guesses. The key is derived from the audit HMAC key file when one is
configured (stable across restarts), else drawn at random per process. Mode
`remove` drops the key instead (a list item becomes `"redacted"`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.errors import ConfigError

SECRET_NAMES = re.compile(
    r"secret|token|passw(?:or)?d|passphrase|credential|api[_-]?key|private[_-]?key"
    r"|authorization|cookie|session[_-]?id|bearer",
    re.IGNORECASE,
)
MODES = ("hash", "remove")
_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")
_PROTECTED = {"schema", "kind", "id", "time", "decision"}
_MAX_NAMES = 4096
_SCALARS = frozenset({str, int, float, bool, type(None)})


class Redactor:
    def __init__(
        self, paths: Iterable[str] = (), *, mode: str = "hash", key: bytes | None = None
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"audit_redact_mode must be one of {', '.join(MODES)}, got {mode!r}")
        parsed: list[tuple[str, ...]] = []
        for path in paths:
            if not _PATH.fullmatch(path):
                raise ConfigError(f"audit_redact: {path!r} is not a dotted path (context.ticket)")
            parts = tuple(path.split("."))
            if len(parts) == 1 and parts[0] in _PROTECTED:
                raise ConfigError(f"audit_redact: {path!r} cannot be redacted")
            parsed.append(parts)
        self.paths = tuple(parsed)
        self.mode = mode
        self._key = key if key else os.urandom(32)
        self._secret: dict[str, bool] = {}  # key name -> whether rule 1 replaces it

    def touches(self, fields: Iterable[str]) -> bool:
        """Whether a configured path can reach one of these top-level event fields."""
        wanted = set(fields)
        return any(parts[0] == "*" or parts[0] in wanted for parts in self.paths)

    def mask(self, value: Any) -> str:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hmac.new(self._key, data.encode(), hashlib.sha256).hexdigest()[:32]
        return f"redacted:hmac-sha256:{digest}"

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted copy of `event`; the input (and the request it came from) is untouched."""
        out = dict(event)
        if "context" in out:
            out["context"] = self._by_name(out["context"])
        if isinstance(out.get("entities"), list):
            out["entities"] = [self._entity(e) for e in out["entities"]]
        for parts in self.paths:
            out = self._by_path(out, parts)
        return out

    def _entity(self, entity: Any) -> Any:
        if isinstance(entity, Mapping) and "attrs" in entity:
            attrs = self._by_name(entity["attrs"])
            if attrs is not entity["attrs"]:
                entity = {**entity, "attrs": attrs}
        return entity

    def _is_secret(self, name: str) -> bool:
        known = self._secret.get(name)
        if known is None:
            known = not name.startswith("__") and SECRET_NAMES.search(name) is not None
            if len(self._secret) < _MAX_NAMES:  # names come from callers: stay bounded
                self._secret[name] = known
        return known

    def _by_name(self, value: Any) -> Any:
        """`value` with secret-named keys replaced; the same object when there are none.

        Runs on every decision: unchanged parts are shared, not copied.
        """
        kind = type(value)
        if kind is str or kind is int or kind is bool or kind is float or value is None:
            return value
        if kind is dict or isinstance(value, Mapping):
            out: dict[str, Any] | None = None
            names = self._secret
            for k, v in value.items():
                secret = names.get(k)
                if secret is None:
                    secret = self._is_secret(k)
                if secret:
                    if out is None:
                        out = dict(value)
                    if self.mode == "hash":
                        out[k] = self.mask(v)
                    else:
                        del out[k]
                    continue
                if type(v) in _SCALARS:
                    continue
                new = self._by_name(v)
                if new is not v:
                    if out is None:
                        out = dict(value)
                    out[k] = new
            return value if out is None else out
        if kind is list or isinstance(value, list):
            items: list[Any] | None = None
            for i, v in enumerate(value):
                new = self._by_name(v)
                if new is not v:
                    if items is None:
                        items = list(value)
                    items[i] = new
            return value if items is None else items
        return value

    def _by_path(self, value: Any, parts: tuple[str, ...]) -> Any:
        head, rest = parts[0], parts[1:]
        if isinstance(value, Mapping):
            keys = list(value) if head == "*" else [head] if head in value else []
            if not keys:
                return value
            out = dict(value)
            for k in keys:
                if rest:
                    out[k] = self._by_path(value[k], rest)
                elif self.mode == "hash":
                    out[k] = self.mask(value[k])
                else:
                    del out[k]
            return out
        if isinstance(value, list):
            if head == "*":
                idx = range(len(value))
            elif head.isdigit() and int(head) < len(value):
                idx = range(int(head), int(head) + 1)
            else:
                return value
            items = list(value)
            for i in idx:
                if rest:
                    items[i] = self._by_path(items[i], rest)
                else:
                    items[i] = self.mask(items[i]) if self.mode == "hash" else "redacted"
            return items
        return value
