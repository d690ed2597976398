"""Reading policy files: ids, effects, annotations and the obligations they carry.

One `*.cedar` file becomes `PolicyInfo`s (what each policy is and where it lives)
and the policies' Cedar JSON, strictly validated against the schema; a problem
names the file, line and column. Obligation annotations (`@max_credential_ttl`,
`@revoke_within`) are ISO-8601 durations read here, once, at load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import cedarpy

from sidecar.core.bundlefiles import Source
from sidecar.core.cedartext import Span, split_policies
from sidecar.core.errors import BundleError
from sidecar.core.limits import LimitError, check_cedar_text

TTL_ANNOTATION = "max_credential_ttl"
# An access a permit grants must be removed within this long of its end (docs/evidence.md).
REVOKE_ANNOTATION = "revoke_within"


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    id: str
    effect: str  # "permit" | "forbid"
    file: str
    line: int
    annotations: Mapping[str, str]
    max_credential_ttl: timedelta | None
    text: str
    revoke_within: timedelta | None = None

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


_POLICY_REF = re.compile(r"policy(\d+)")


def parse_policy_file(
    src: Source, schema: cedarpy.Schema, start: int, validate: bool
) -> list[tuple[PolicyInfo, Any]]:
    """Parse and strictly validate one file; whatever fails names the file."""
    try:
        return _parse_policies(src, schema, start, validate)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"cannot be loaded: {type(exc).__name__}: {exc}", file=src.name) from exc


def _parse_policies(
    src: Source, schema: cedarpy.Schema, start: int, validate: bool
) -> list[tuple[PolicyInfo, Any]]:
    """Parse and strictly validate one file; ids are `@id` or positional `policyN`."""
    try:
        check_cedar_text(src.text)
    except LimitError as exc:
        raise BundleError(f"column {exc.column}: {exc}", file=src.name, line=exc.line) from exc
    spans = split_policies(src.text)
    try:
        est = json.loads(cedarpy.policies_to_json_str(src.text))
    except ValueError as exc:
        span = _first_bad_span(spans)
        raise BundleError(
            f"syntax error: {exc}" + (f" in: {_snippet(span.text)}" if span else ""),
            file=src.name,
            line=span.line if span else 0,
        ) from exc
    if est.get("templates"):
        raise BundleError(
            "policy templates are not supported; write static policies", file=src.name
        )
    local = sorted(est["staticPolicies"].items(), key=lambda kv: _policy_index(kv[0]))
    if len(local) != len(spans):  # pragma: no cover - the lexer and Cedar disagree
        spans = [Span("", 0, 0)] * len(local)
    if validate:
        _validate(src, schema, spans)
    out: list[tuple[PolicyInfo, Any]] = []
    for i, ((_, body), span) in enumerate(zip(local, spans, strict=True)):
        annotations = {str(k): str(v) for k, v in (body.get("annotations") or {}).items()}
        pid = annotations.get("id") or f"policy{start + i}"
        effect = str(body["effect"])
        revoke = _duration_annotation(src, span, annotations, REVOKE_ANNOTATION)
        if revoke is not None and effect != "permit":
            line, column = _annotation_at(span, REVOKE_ANNOTATION)
            raise BundleError(
                f"@{REVOKE_ANNOTATION} on a forbid: obligations come only from the permits "
                "that allow a step; put it on the permit",
                file=src.name,
                line=line,
                column=column,
            )
        info = PolicyInfo(
            id=pid,
            effect=effect,
            file=src.name,
            line=span.line,
            annotations=MappingProxyType(annotations),
            max_credential_ttl=_duration_annotation(src, span, annotations, TTL_ANNOTATION),
            text=span.text,
            revoke_within=revoke,
        )
        out.append((info, body))
    return out


def _duration_annotation(
    src: Source, span: Span, annotations: Mapping[str, str], name: str
) -> timedelta | None:
    """An obligation's ISO-8601 duration (`@max_credential_ttl("PT15M")`); a value that
    is not one is refused at its line and column."""
    text = annotations.get(name)
    if text is None:
        return None
    try:
        return parse_iso_duration(text)
    except ValueError as exc:
        line, column = _annotation_at(span, name)
        raise BundleError(
            f"@{name}({text!r}): {exc}", file=src.name, line=line, column=column
        ) from exc


def _annotation_at(span: Span, name: str) -> tuple[int, int]:
    """Line and column of `@name(`'s value in the file (the policy's start if not found)."""
    m = re.search(rf"@\s*{name}\s*\(\s*", span.text)
    if m is None:  # pragma: no cover - Cedar parsed the annotation from this text
        return span.line, span.column
    before = span.text[: m.end()]
    newlines = before.count("\n")
    if not newlines:
        return span.line, span.column + m.end()
    return span.line + newlines, m.end() - before.rfind("\n")


def _validate(src: Source, schema: cedarpy.Schema, spans: list[Span]) -> None:
    result = cedarpy.validate_policies(src.text, schema)
    if result.validation_passed:
        return
    first = result.errors[0]
    m = _POLICY_REF.fullmatch(first.policy_id)
    span = spans[int(m.group(1))] if m and int(m.group(1)) < len(spans) else None
    more = len(result.errors) - 1
    raise BundleError(
        f"validation error: {first.error}"
        + (f" in: {_snippet(span.text)}" if span else "")
        + (f" ({more} more validation error(s) in this file)" if more else ""),
        file=src.name,
        line=span.line if span else 0,
    )


def _first_bad_span(spans: list[Span]) -> Span | None:
    for span in spans:
        try:
            cedarpy.policies_to_json_str(span.text)
        except ValueError:
            return span
    return spans[-1] if spans else None


def _policy_index(pid: str) -> int:
    m = _POLICY_REF.fullmatch(pid)
    return int(m.group(1)) if m else 0


def _snippet(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_DURATION = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_iso_duration(text: str) -> timedelta:
    """Parse an ISO-8601 duration of days, hours, minutes, seconds (`PT15M`, `P1DT2H`)."""
    m = _DURATION.fullmatch(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise ValueError("expected an ISO-8601 duration such as PT15M or PT1H")
    return timedelta(
        days=int(m["d"] or 0),
        hours=int(m["h"] or 0),
        minutes=int(m["m"] or 0),
        seconds=float(m["s"] or 0),
    )
