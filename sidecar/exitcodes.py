"""Exit codes of the `stepguard` command line, in one place.

CI scripts branch on these, so each means one thing in every command:

    0  success (check: ALLOW)
    1  error: bad input, unreadable files, bad flags
    2  check: DENY
    3  the check asked for found problems: failing test cases, unformatted
       files (fmt --check), changed decisions (replay --fail-on-change)
    4  the policies are invalid (do not load, do not parse), in every command
    5  test --fail-on-empty: no test case ran
    6  test --coverage-min / --clause-coverage-min: coverage below the minimum
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DENY = 2
EXIT_FAILED = 3
EXIT_INVALID = 4
EXIT_EMPTY = 5
EXIT_COVERAGE = 6
