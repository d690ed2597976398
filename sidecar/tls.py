"""Compatibility path: `from sidecar.tls import channel_credentials` (docs before 0.2).

The client's TLS helper now lives with the client (`sidecar.client`); the
server's TLS material lives in `sidecar.serving.tls`. This module keeps the
published import working and holds nothing else.
"""

from sidecar.client import channel_credentials

__all__ = ["channel_credentials"]
