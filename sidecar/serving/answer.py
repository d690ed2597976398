"""The answer on the wire: a decision as an AuthorizeResponse, and its bytes.

A cache hit answers with the same decision as the call that filled its
entry, so everything in its response but the decision id is the same bytes
every time. `Answers` keeps those bytes per cached decision and splices this
call's id in, instead of building and serializing the message again on the
hot path. A protobuf message may carry its fields in any order, so a prefix
plus one more field parses to exactly the message `to_response` builds
(tests/serving/test_answer.py).
"""

from __future__ import annotations

from dataclasses import replace

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.explain import Clause, Explanation, Outcome, Value, deciding_text, ordered
from sidecar.core.model import Decision, PolicyErrors, Result
from sidecar.decision.decider import Decided

_DECISION = {Decision.ALLOW: pb.DECISION_ALLOW, Decision.DENY: pb.DECISION_DENY}
_POLICY_ERRORS = {
    PolicyErrors.DENY: pb.POLICY_ERRORS_DENY,
    PolicyErrors.CEDAR: pb.POLICY_ERRORS_CEDAR,
}
_DECISION_ID = pb.AuthorizeResponse.DESCRIPTOR.fields_by_name["decision_id"].number
_STREAM_ID = pb.AuthorizeStreamResponse.DESCRIPTOR.fields_by_name["id"].number
_STREAM_RESPONSE = pb.AuthorizeStreamResponse.DESCRIPTOR.fields_by_name["response"].number
MEMO_SIZE = 4096  # distinct cached decisions whose bytes are kept; then it starts over


def to_response(decided: Decided) -> pb.AuthorizeResponse:
    result = decided.result
    out = pb.AuthorizeResponse(
        decision=_DECISION[result.decision],
        decision_id=decided.decision_id,
        policy_revision=result.revision,
        reason=result.summary(),
        policy_errors=_POLICY_ERRORS[result.policy_errors],
    )
    for ref in result.reasons:
        out.determining_policies.add(
            id=ref.id, annotations=dict(ref.annotations), source=ref.source
        )
    for err in result.errors:
        out.errors.add(policy_id=err.policy_id, message=err.message)
    ttl = result.obligations.max_credential_ttl
    if ttl is not None:
        out.obligations.max_credential_ttl.FromTimedelta(ttl)
    revoke = result.obligations.revoke_within
    if revoke is not None:
        out.obligations.revoke_within.FromTimedelta(revoke)
    if decided.explanation is not None:
        out.explanation.CopyFrom(explanation_to_proto(decided.explanation))
    return out


class Answers:
    """Serialized AuthorizeResponses, with the bytes of cached decisions kept.

    Keyed by the identity of the cached Result (the cache hands out the same
    object on every hit; the memo holds it, so its id cannot be reused while
    the entry lives here). Thread-safe: a lost race only builds bytes twice.
    """

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Result, bytes]] = {}

    def encode(self, decided: Decided) -> bytes:
        """The AuthorizeResponse for `decided`, serialized."""
        if not decided.cached or decided.explanation is not None:
            return to_response(decided).SerializeToString()
        result = decided.result
        found = self._memo.get(id(result))
        if found is not None and found[0] is result:
            rest = found[1]
        else:
            rest = to_response(replace(decided, decision_id="")).SerializeToString()
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[id(result)] = (result, rest)
        return rest + _length_delimited(_DECISION_ID, decided.decision_id.encode())

    def encode_stream(self, item_id: int, decided: Decided) -> bytes:
        """An AuthorizeStreamResponse answering item `item_id` with `decided`, serialized."""
        head = _varint((_STREAM_ID << 3) | 0) + _varint(item_id) if item_id else b""
        return head + _length_delimited(_STREAM_RESPONSE, self.encode(decided))


def _length_delimited(number: int, data: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# --- the explanation (AuthorizeRequest.explain) --------------------------------------

_OUTCOME_PB = {
    Outcome.NOT_APPLICABLE: "POLICY_OUTCOME_NOT_APPLICABLE",
    Outcome.SATISFIED: "POLICY_OUTCOME_SATISFIED",
    Outcome.NOT_SATISFIED: "POLICY_OUTCOME_NOT_SATISFIED",
    Outcome.ERRORED: "POLICY_OUTCOME_ERRORED",
    Outcome.NOT_EVALUATED: "POLICY_OUTCOME_NOT_EVALUATED",
}
_VALUE_PB = {
    Value.TRUE: "CLAUSE_VALUE_TRUE",
    Value.FALSE: "CLAUSE_VALUE_FALSE",
    Value.ERROR: "CLAUSE_VALUE_ERROR",
    Value.UNKNOWN: "CLAUSE_VALUE_UNSPECIFIED",
}


def explanation_to_proto(explanation: Explanation) -> pb.Explanation:
    """The wire form (`AuthorizeResponse.explanation`), determining policies first.

    Here, not in core/explain.py: the core describes why; building protobuf
    answers is the gRPC transport's part."""
    out = pb.Explanation(request_errors=list(explanation.request_errors))
    for p in ordered(explanation):
        item = out.policies.add(
            id=p.id,
            effect=p.effect,
            source=p.source,
            outcome=pb.PolicyOutcome.Value(_OUTCOME_PB[p.outcome]),
            determining=p.determining,
            errors=list(p.errors),
            why=deciding_text(p),
        )
        if p.deciding is not None:
            _fill_clause(item.deciding_clause, p.deciding)
        for clause in p.clauses:
            _fill_clause(item.clauses.add(), clause)
        if p.max_credential_ttl is not None:
            item.max_credential_ttl.FromTimedelta(p.max_credential_ttl)
    return out


def _fill_clause(out: pb.Clause, clause: Clause) -> None:
    out.kind = clause.kind
    out.source = clause.source
    out.text = clause.text
    out.value = pb.ClauseValue.Value(_VALUE_PB[clause.value])
    out.error = clause.error
