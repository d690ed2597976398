"""Policy authors' tools: test suites, coverage, diagnostics, fmt, replay.

They use the same core as the sidecar and never import the serving path, so a
policy tested here is decided the same way in production.
"""
