"""The audit trail: one event per decision, written before the answer leaves."""

from sidecar.audit.sink import AuditSink, MemorySink

__all__ = ["AuditSink", "MemorySink"]
