"""Evidence: who got access, why, and when it was removed, answered from the trail.

`stepguard evidence` (sidecar/cli/evidence.py) verifies one or several trails
exactly as `audit verify` does, loads their decision and outcome events into
an embedded SQLite store (store.py), replays what each step did to access
(the lifecycle model of docs/evidence.md) and answers auditors' questions
(answers.py), as tables or as one self-contained HTML report (report.py).

This room imports audit and core only: it reads trails and returns data; it
never serves, and never prints (the command does).
"""
