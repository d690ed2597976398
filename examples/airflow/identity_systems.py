"""Stand-ins for the target systems the example DAGs change (on PYTHONPATH, beside
airflow_local_settings.py, so that DAG files can import it).

Each call appends one JSON line to the file named by EXAMPLE_SYSTEMS_LOG (when
set), so a test can see which steps really ran; otherwise it only logs. A
system named in EXAMPLE_SYSTEMS_DOWN (comma-separated) is down: a call to it
raises TargetSystemDown, as a real outage would fail the step.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


class TargetSystemDown(ConnectionError):
    """The target system did not answer: the step failed and changed nothing."""


def record(system: str, action: str, **details: Any) -> None:
    if system in os.environ.get("EXAMPLE_SYSTEMS_DOWN", "").split(","):
        raise TargetSystemDown(f"{system} is down: {action} not done")
    entry = {"system": system, "action": action, **details}
    log.info("%s: %s %s", system, action, details)
    path = os.environ.get("EXAMPLE_SYSTEMS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
