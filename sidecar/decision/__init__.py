"""The one place a decision is made: cache -> engine -> audit -> metrics.

Every transport (gRPC, AuthZEN) and the `check` command decide through
`Decider`; nothing here knows which transport asked.
"""
