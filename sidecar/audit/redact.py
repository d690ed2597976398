"""Redaction: secrets never reach the trail.

Three rules, applied to every event before it is chained:

1. By name (always on, extended by `audit_redact_keys`): in `context` and in
   the attributes of request entities, at any depth, a key whose name contains
   one of `SECRET_NAMES` or has one of `SECRET_WORDS` as a word (`userPin`,
   `x-auth`, `SSN`) has its value replaced.
2. By value (always on, extended by `audit_redact_values`): in the same
   places, a string that looks like a secret whatever its key (`VALUE_PATTERNS`:
   bearer tokens, JWTs, PEM blocks, cloud and SaaS key formats, URLs with a
   password) is replaced, and so is the call's `request_id`. Extension values
   (`__extn`: datetimes, IPs, decimals) are never secrets and are not read.
3. By path (configured): dotted paths from the event root, `*` matching any
   one key or list item, e.g. `context.approval.ticket` or
   `entities.*.attrs.email`.

`workflow_id`, `run_id` and `step_id` are read from the redacted context, so
a secret in them is replaced there too.

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

from sidecar.core.errors import ConfigError

SECRET_NAMES = re.compile(
    r"secret|token|passw(?:or)?d|pwd|passphrase|credential|api[_-]?key|private[_-]?key"
    r"|access[_-]?key|authorization|cookie|session[_-]?id|bearer|jwt|signing[_-]?key"
    r"|connection[_-]?string",
    re.IGNORECASE,
)
# Short names matched as a whole word of the key only ("pin" but not "shipping").
SECRET_WORDS = frozenset({"auth", "otp", "totp", "hotp", "pin", "ssn", "cvv", "cvc", "dsn"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Values that are secrets whatever their key: name -> pattern (searched). Each
# starts with a literal character (no leading \b, no flags), so the combined
# pattern skips ahead on a character set: ~0.5 us for a 30-character value.
VALUE_PATTERNS: dict[str, str] = {
    "bearer": r"[Bb][Ee][Aa][Rr][Ee][Rr]\s+[A-Za-z0-9._~+/-]{16,}=*",
    "jwt": r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    "pem": r"-----BEGIN [A-Z0-9 ]{3,}-----",
    "aws_access_key_id": r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])",
    "github_token": r"g(?:h[pousr]_[A-Za-z0-9]{36,}|ithub_pat_[A-Za-z0-9_]{22,})",
    "gitlab_token": r"glpat-[A-Za-z0-9_-]{20,}",
    "slack_token": r"xox[abposr]-[A-Za-z0-9-]{10,}",
    "slack_webhook": r"hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+",
    "google_api_key": r"AIza[A-Za-z0-9_-]{35}",
    "stripe_key": r"[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
    "url_password": r"://[^/\s:@]+:[^/\s@]+@",
}
_MIN_VALUE = 7  # no built-in pattern matches a shorter string
MODES = ("hash", "remove")
_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")
_PROTECTED = {
    "schema",
    "kind",
    "id",
    "time",
    "decision",
    "decision_id",
    "decided",
    "status",
    "violation",
}
_MAX_NAMES = 4096
_MAX_CLEAN_TEXTS = 4096
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _compile(setting: str, patterns: Iterable[str], flags: int = 0) -> list[re.Pattern[str]]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern, flags))
        except re.error as exc:
            raise ConfigError(f"{setting}: {pattern!r} is not a regular expression: {exc}") from exc
    return out


class Redactor:
    def __init__(
        self,
        paths: Iterable[str] = (),
        *,
        mode: str = "hash",
        key: bytes | None = None,
        keys: Iterable[str] = (),
        values: Iterable[str] = (),
    ) -> None:
        """`keys` and `values`: extra regular expressions for rules 1 and 2 (settings
        `audit_redact_keys`, `audit_redact_values`)."""
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
        self._names = _compile("audit_redact_keys", keys, re.IGNORECASE)
        self._values = re.compile("|".join(VALUE_PATTERNS.values()))
        self._extra = _compile("audit_redact_values", values)
        self._clean_texts: set[str] = set()  # strings rule 2 leaves alone (clean_texts)

    def touches(self, fields: Iterable[str]) -> bool:
        """Whether redaction can change one of these top-level event fields beyond
        what the request determines (then a cache hit cannot reuse its event).

        Configured paths, and `context` when the name rule would replace the
        server's `context.now`. `request_id` is handled apart (`stampable`).
        """
        wanted = set(fields)
        if "context" in wanted and self._is_secret("now"):
            return True
        return any(parts[0] == "*" or parts[0] in wanted for parts in self.paths)

    def secret_value(self, value: str) -> bool:
        """Rule 2: whether `value` looks like a secret."""
        if len(value) >= _MIN_VALUE and self._values.search(value) is not None:
            return True
        return any(p.search(value) for p in self._extra) if self._extra else False

    def stampable(self, request_id: str) -> bool:
        """Whether a cache hit with this `request_id` may reuse its decision's event
        as is (rule 2 leaves the id alone); else the event is built anew."""
        return not request_id or not self.secret_value(request_id)

    def mask(self, value: Any) -> str:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hmac.new(self._key, data.encode(), hashlib.sha256).hexdigest()[:32]
        return f"redacted:hmac-sha256:{digest}"

    def reaches(self, event: Mapping[str, Any]) -> bool:
        """Whether `apply` can change `event`: it holds a context, entities or a request
        id, or paths are configured. An outcome event usually holds none of them, and
        its builder then skips the copy `apply` makes."""
        return (
            bool(self.paths) or "context" in event or "entities" in event or ("request_id" in event)
        )

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted copy of `event`; the input (and the request it came from) is untouched."""
        out = dict(event)
        if "context" in out:
            out["context"] = self._by_name(out["context"])
        if isinstance(out.get("entities"), list):
            out["entities"] = [self._entity(e) for e in out["entities"]]
        rid = out.get("request_id")
        if isinstance(rid, str) and self.secret_value(rid):
            if self.mode == "hash":
                out["request_id"] = self.mask(rid)
            else:
                del out["request_id"]
        for parts in self.paths:
            out = self._by_path(out, parts)
        return out

    def by_value(self, value: Any) -> Any:
        """Rule 2 alone, at any depth: for data whose key names are the API's own
        (an outcome's `effect`), where rule 1 would replace whole fields by name
        (`credential`). The same object when nothing is replaced.

        Most values hold no secret: one scan that allocates nothing says so
        (`_clean`), and only a value it cannot clear is walked and rebuilt.
        """
        if self._clean(value):
            return value
        if isinstance(value, str):
            return self._masked(value) if self.secret_value(value) else value
        if isinstance(value, Mapping):
            out = {}
            changed = False
            for k, v in value.items():
                r = self._value(v)
                out[k] = r
                changed = changed or r is not v
            if not changed:
                return value
            return {k: v for k, v in out.items() if v is not None or value[k] is None}
        if isinstance(value, list):
            items = [self._value(v) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return [
                "redacted" if a is None and b is not None else a
                for a, b in zip(items, value, strict=True)
            ]
        return value

    def clean_texts(self, texts: Iterable[str]) -> bool:
        """Whether rule 2 replaces none of these strings: `_clean` of a value whose
        strings they are (an outcome's effect, checked on its own fields before its
        JSON is walked). Extra strings ("" included) can only make it say no.

        An effect's strings repeat (entitlements, target systems, identity types):
        one found clean is remembered (`_clean_texts`, bounded, emptied when full),
        and only clean ones are: nothing that rule 2 replaces is ever kept.
        """
        search, extra, known = self._values.search, self._extra, self._clean_texts
        for v in texts:
            if len(v) < _MIN_VALUE and not extra:
                continue  # no built-in pattern matches it: nothing to search or remember
            if v in known:
                continue
            if len(v) >= _MIN_VALUE and search(v) is not None:
                return False
            if extra and any(p.search(v) for p in extra):
                return False
            if len(known) >= _MAX_CLEAN_TEXTS:
                known.clear()
            known.add(v)
        return True

    def _clean(self, value: Any) -> bool:
        """Whether rule 2 replaces nothing in a plain JSON value (str, dict, list,
        scalars); False for anything else too, which `by_value` then walks."""
        kind = type(value)
        if kind is str:
            if len(value) >= _MIN_VALUE and self._values.search(value) is not None:
                return False
            return not self._extra or not any(p.search(value) for p in self._extra)
        if kind is dict:
            members = value.values()
        elif kind is list:
            members = value
        else:
            return kind in _SCALARS
        for v in members:
            if type(v) is str:  # most members: checked here, without the call
                if len(v) >= _MIN_VALUE and self._values.search(v) is not None:
                    return False
                if self._extra and any(p.search(v) for p in self._extra):
                    return False
            elif not self._clean(v):
                return False
        return True

    def _value(self, value: Any) -> Any:
        """`by_value` of one member: a plain string (most are) without the call."""
        if type(value) is str:
            return self._masked(value) if self.secret_value(value) else value
        return self.by_value(value)

    def _masked(self, value: str) -> str | None:
        return self.mask(value) if self.mode == "hash" else None

    def _entity(self, entity: Any) -> Any:
        if isinstance(entity, Mapping) and "attrs" in entity:
            attrs = self._by_name(entity["attrs"])
            if attrs is not entity["attrs"]:
                entity = {**entity, "attrs": attrs}
        return entity

    def _is_secret(self, name: str) -> bool:
        known = self._secret.get(name)
        if known is None:
            known = not name.startswith("__") and (
                SECRET_NAMES.search(name) is not None
                or any(w.lower() in SECRET_WORDS for w in _WORDS.findall(name))
                or any(p.search(name) for p in self._names)
            )
            if len(self._secret) < _MAX_NAMES:  # names come from callers: stay bounded
                self._secret[name] = known
        return known

    def _by_name(self, value: Any) -> Any:
        """`value` with rules 1 and 2 applied; the same object when nothing is replaced.

        Runs on every decision: unchanged parts are shared, not copied.
        """
        kind = type(value)
        if kind is str or kind is int or kind is bool or kind is float or value is None:
            return value
        if kind is dict or isinstance(value, Mapping):
            out: dict[str, Any] | None = None
            names = self._secret
            search, extra = self._values.search, self._extra
            for k, v in value.items():
                secret = names.get(k)
                if secret is None:
                    secret = self._is_secret(k)
                if not secret:
                    kv = type(v)
                    if kv is str:  # secret_value, inline: every string of every event
                        if len(v) >= _MIN_VALUE and search(v) is not None:
                            secret = True
                        elif not extra or not any(p.search(v) for p in extra):
                            continue
                        else:
                            secret = True
                    elif kv in _SCALARS or k == "__extn":  # extension values: no secrets
                        continue
                if secret:
                    if out is None:
                        out = dict(value)
                    if self.mode == "hash":
                        out[k] = self.mask(v)
                    else:
                        del out[k]
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
                if type(v) is str and self.secret_value(v):
                    item: Any = self.mask(v) if self.mode == "hash" else "redacted"
                else:
                    item = self._by_name(v)
                if item is not v:
                    if items is None:
                        items = list(value)
                    items[i] = item
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
