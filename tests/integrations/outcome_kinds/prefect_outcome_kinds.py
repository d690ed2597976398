"""A flow whose guarded tasks are stopped by Prefect's timeout_seconds, sync and
async, which the examples never are. Run by prefect_runner.py."""

from __future__ import annotations

import asyncio
import time

from prefect import flow

from sidecar.integrations.prefect import guarded_task, planned

NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"


@guarded_task("notify", target="slack", workload=NOTIFIER, timeout_seconds=1)
def slow_send() -> None:
    for _ in range(100):  # interrupted after 1 s, between two short sleeps at worst
        time.sleep(0.05)


@guarded_task("notify", target="slack", workload=NOTIFIER, timeout_seconds=1)
async def slow_async_send() -> None:
    await asyncio.sleep(5)  # cancelled after 1 s


@flow(name="outcome_kinds")  # type: ignore[untyped-decorator]
async def outcome_kinds(requester: str) -> None:
    for call in (slow_send, slow_async_send):
        try:
            result = call()
            if asyncio.iscoroutine(result):
                await result
        except TimeoutError:
            pass  # the next one runs too


# What PREFECT_STEPGUARD_PLAN_CHECK does when a flow run starts: its second step
# is certainly denied (the provisioner may not revoke access).
PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"


@guarded_task("notify", target="slack", workload=NOTIFIER)
def announce() -> None:
    import identity_flows  # type: ignore[import-not-found]  # on sys.path: prefect_runner.py

    identity_flows.record("slack", "notify", about="leaver")


@guarded_task("revoke_access", target="okta", workload=PROVISIONER)
def revoke() -> None:
    import identity_flows

    identity_flows.record("okta", "revoke_access", account="carol@example.org")


@flow(name="preflight")  # type: ignore[untyped-decorator]
@planned(announce, revoke)
def preflight(requester: str) -> None:
    announce()
    revoke()
