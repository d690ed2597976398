"""The decision core: a bundle, a request and the engine that decides it.

Pure by rule (tests/project/test_layering.py): no network, no trail, no
metrics, no cache, nothing of the serving path. The one kind of I/O here is
reading a policy directory into an immutable `Bundle`.
"""
