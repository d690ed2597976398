#!/usr/bin/env bash
# A real browser for tests/evidence/test_evidence_report.py, which opens the
# evidence HTML report in Debian's chromium driven by Playwright (pinned in the
# dev extra; `playwright install` is never run: it downloads a browser).
#
# Installs `chromium` with apt-get when it is missing and this runs as root
# (a fresh CI machine); otherwise says why not and returns 0: the test then
# skips locally and fails in CI (tests/conftest.py `missing`).
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [[ $(id -u) != 0 ]]; then
    echo "chromium is missing and cannot be installed here (needs apt-get as root):" \
        "the report's browser test will skip (and fail in CI)" >&2
    exit 0
fi
echo "installing chromium (Debian) for the evidence report's browser test" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q chromium >/dev/null; then
    apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null ||
        echo "apt-get could not install chromium: the report's browser test will skip" \
            "(and fail in CI)" >&2
fi
exit 0
