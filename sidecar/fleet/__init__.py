"""The fleet: every sidecar's trail shipped to NATS JetStream and collected into PostgreSQL.

`stepguard ship` (ship.py) tails a trail directory beside a sidecar and
publishes each record; `stepguard collect` (collect.py) writes them into
PostgreSQL (store.py), checking each chain as it goes (continuity.py). The
sidecar never imports this room: shipping is a separate process reading files,
so it cannot slow or block a decision. docs/fleet.md is the operator's guide.
"""
