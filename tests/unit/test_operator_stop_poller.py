"""Deleted probes' statuses: one list per namespace and poll serves every waiter (a fake API here; the
real one in tests/reliability/test_probe_churn.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from mace_operator.reconcile import StopPoller


class FakeApi:
    def __init__(self) -> None:
        self.lists: list[str] = []
        self.items: dict[str, list[dict[str, Any]]] = {}
        self.fail_next = False

    async def get_probe(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise AssertionError("waiters must not read probes one by one")

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def patch_probe_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        return None

    async def remove_finalizer(self, namespace: str, name: str, finalizers: list[str],
                               finalizer: str) -> None:
        return None

    async def list_probes(self, namespace: str) -> list[dict[str, Any]]:
        self.lists.append(namespace)
        if self.fail_next:
            self.fail_next = False
            raise OSError("connection refused")
        return self.items.get(namespace, [])


def probe(name: str, state: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"results": {"state": state}}}


def test_one_list_per_namespace_serves_every_waiter() -> None:
    api = FakeApi()
    api.items = {"a": [probe(f"p{i}", "Stopped") for i in range(199)], "b": [probe("q", "Measuring")]}
    poller = StopPoller(api, interval=0.01)

    async def main() -> list[dict[str, Any] | None]:
        waits = [poller.next_status("a", f"p{i}") for i in range(200)] + [poller.next_status("b", "q")]
        return await asyncio.gather(*waits)

    statuses = asyncio.run(main())
    assert sorted(api.lists) == ["a", "b"]
    assert statuses[0] == {"results": {"state": "Stopped"}}
    assert statuses[199] is None, "a probe missing from the list is gone"
    assert statuses[200] == {"results": {"state": "Measuring"}}


def test_a_failed_list_is_tried_again() -> None:
    api = FakeApi()
    api.items = {"a": [probe("p", "Stopped")]}
    api.fail_next = True
    poller = StopPoller(api, interval=0.01)
    status = asyncio.run(asyncio.wait_for(poller.next_status("a", "p"), 5))
    assert status == {"results": {"state": "Stopped"}} and api.lists == ["a", "a"]
