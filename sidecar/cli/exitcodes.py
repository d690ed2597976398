"""Exit codes of the `stepguard` command line, in one place.

CI scripts branch on these, so each means one thing in every command:

    0  success (check: ALLOW; healthcheck: SERVING)
    1  error: bad input, unreadable files, bad flags or usage; healthcheck:
       not serving or not reachable
    2  check: DENY; plan: a step is certainly denied
    3  the check asked for found problems: failing test cases, unformatted
       files (fmt --check), changed decisions (replay --fail-on-change)
    4  the policies are invalid (do not load, do not parse), in every command
    5  test --fail-on-empty: no test case ran
    6  test --coverage-min / --clause-coverage-min: coverage below the minimum

`audit verify` has codes of its own for what it finds (sidecar/audit/verify.py);
`COMMAND_EXIT_CODES` lists what each command can return, for `--help`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DENY = 2
EXIT_FAILED = 3
EXIT_INVALID = 4
EXIT_EMPTY = 5
EXIT_COVERAGE = 6

_USAGE = (EXIT_ERROR, "error: bad flags or input, unreadable files")
_INVALID = (EXIT_INVALID, "the policies are invalid (do not load or parse)")

# Per command (its words after `stepguard`): every code it can exit with, and why.
COMMAND_EXIT_CODES: dict[str, tuple[tuple[int, str], ...]] = {
    "serve": ((EXIT_OK, "stopped cleanly (SIGTERM, SIGINT)"), _USAGE, _INVALID),
    "check": ((EXIT_OK, "ALLOW"), _USAGE, (EXIT_DENY, "DENY"), _INVALID),
    "plan": (
        (EXIT_OK, "no step is certainly denied"),
        _USAGE,
        (EXIT_DENY, "a step is certainly denied"),
        _INVALID,
    ),
    "validate": ((EXIT_OK, "the policies are valid"), _USAGE, _INVALID),
    "healthcheck": (
        (EXIT_OK, "SERVING"),
        (EXIT_ERROR, "not serving, unknown service, unreachable, timed out, or bad flags"),
    ),
    "test": (
        (EXIT_OK, "every case passed"),
        _USAGE,
        (EXIT_FAILED, "a case failed or a suite could not run"),
        _INVALID,
        (EXIT_EMPTY, "--fail-on-empty: no case ran"),
        (EXIT_COVERAGE, "coverage below --coverage-min or --clause-coverage-min"),
    ),
    "fmt": (
        (EXIT_OK, "formatted, or nothing to do"),
        _USAGE,
        (EXIT_FAILED, "--check: some files are not formatted"),
        (EXIT_INVALID, "a file does not parse"),
    ),
    "replay": (
        (EXIT_OK, "done"),
        _USAGE,
        (EXIT_FAILED, "--fail-on-change: some decision would change"),
        (EXIT_INVALID, "the candidate (or baseline) policies do not load"),
    ),
    "audit": ((EXIT_OK, "done"), _USAGE),
    "audit verify": (
        (EXIT_OK, "intact"),
        (
            EXIT_ERROR,
            "cannot verify (unreadable file, missing or wrong key, nothing to verify, bad flags)",
        ),
        (3, "modified"),
        (4, "deleted"),
        (5, "inserted"),
        (6, "reordered"),
        (7, "truncated"),
        (8, "missing: a worker's chain its manifest lists, or the manifest, is not on disk"),
    ),
    "audit query": (
        (EXIT_OK, "done (also when nothing matches)"),
        _USAGE,
        (3, "--verify: the trail is broken (the codes of `audit verify`, 3 to 8)"),
    ),
    "evidence": ((EXIT_OK, "done"), _USAGE),
    "ship": (
        (EXIT_OK, "stopped cleanly (SIGTERM, SIGINT); --status: shipping or caught up"),
        (EXIT_ERROR, "bad flags or input; --status: broker unavailable or full, or not running"),
    ),
    "collect": ((EXIT_OK, "stopped cleanly (SIGTERM, SIGINT)"), _USAGE),
    "fleet": ((EXIT_OK, "done"), _USAGE),
    "fleet status": (
        (EXIT_OK, "no open finding"),
        _USAGE,
        (EXIT_FAILED, "open findings: gaps, forks, bad hashes, revision drift"),
    ),
}
# `stepguard evidence ANSWER`: the answer is printed even from a broken trail, and says so.
_EVIDENCE = (
    (EXIT_OK, "done, from trails that verify"),
    _USAGE,
    (EXIT_FAILED, "a trail does not verify (as `audit verify`): the answer says so"),
    _INVALID,
)
for _answer in ("inventory", "access", "open-grants", "leavers", "exceptions", "report"):
    COMMAND_EXIT_CODES[f"evidence {_answer}"] = _EVIDENCE


def epilog(command: str) -> str:
    """The `--help` footer listing `command`'s exit codes ("" if unknown)."""
    codes = COMMAND_EXIT_CODES.get(command)
    if not codes:
        return ""
    return "exit codes:\n" + "\n".join(f"  {code}  {why}" for code, why in codes)
