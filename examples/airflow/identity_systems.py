"""Stand-ins for the target systems the example DAGs change (on PYTHONPATH, beside
airflow_local_settings.py, so that DAG files can import it).

Each call appends one JSON line to the file named by EXAMPLE_SYSTEMS_LOG (when
set), so a test can see which steps really ran; otherwise it only logs.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def record(system: str, action: str, **details: Any) -> None:
    entry = {"system": system, "action": action, **details}
    log.info("%s: %s %s", system, action, details)
    path = os.environ.get("EXAMPLE_SYSTEMS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
