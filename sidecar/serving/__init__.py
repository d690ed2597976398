"""The sidecar process: transports (gRPC, AuthZEN over HTTP), settings, TLS,
hot reload and the health and metrics port. Transports only convert: what
they receive goes to `sidecar.decision`, what it returns goes back out.
"""
