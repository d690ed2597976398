"""The whole entity set of one request, for what evaluates beside the engine.

The engine decides with the part of the store a request can reach (its stored
slices plus what the request supplies: engine._entities_for), which gives the
same answers as the whole store plus the request's own entities. Explanations
(core/explain.py) and plans (core/plan.py) are not the hot path; they evaluate
their own probes and partial requests on this whole set.
"""

from __future__ import annotations

import json

import cedarpy

from sidecar.core.bundle import Bundle
from sidecar.core.model import AuthzRequest


def request_entities(bundle: Bundle, request: AuthzRequest) -> cedarpy.Entities:
    """The store plus what `request` supplies; may raise ValueError.

    Validation admits data only for entities the store lacks.
    """
    added = [d.to_json() for d in request.entities if d.uid not in bundle.entity_json]
    if not added:
        return bundle.entities
    return bundle.entities.with_added_json_str(json.dumps(added), bundle.schema)
