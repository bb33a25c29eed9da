"""The real ports: the batch step's view of the Salesforce edge (connected only when a batch has something
to write), and the dry run's writer and state, which record the plan and change nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.pipeline.batch import describe_op
from stripe_sf_sync.rules import Intent
from stripe_sf_sync.salesforce.lookups import AccountCache, Lookups, SfOp, WriteResult, find
from stripe_sf_sync.salesforce.org import OrgCheck, OrgFacts
from stripe_sf_sync.salesforce.sink import BulkWriter, CollectionsWriter, SalesforceGateway


class SalesforceAccess:
    """Connects to Salesforce only when a batch has something to write (quiet runs cost nothing)."""

    def __init__(self, factory: Callable[[], SalesforceGateway]) -> None:
        self._factory = factory
        self._gw: SalesforceGateway | None = None

    @property
    def connected(self) -> SalesforceGateway | None:
        """The gateway, if one was opened."""
        return self._gw

    def get(self) -> SalesforceGateway:
        """The gateway, connecting on first use."""
        if self._gw is None:
            self._gw = self._factory()
        return self._gw

    def budget_spent(self) -> str | None:
        """Why the run must stop here, when the org's daily usage reached the configured share."""
        return None if self._gw is None else self._gw.budget_reason()


class SalesforceRecords:
    """The record lookup port: batched SOQL through the gateway, the org's facts, and the Accounts this run
    has read (stripe-sf never creates Accounts and records what it writes to them, so later batches of a
    run need not look them up again)."""

    def __init__(self, access: SalesforceAccess, org: OrgCheck) -> None:
        self._access = access
        self._org = org
        self._accounts = AccountCache()

    @property
    def described(self) -> bool:
        """Whether the org was described in this run."""
        return self._org.described

    def org_facts(self, *, refresh: bool = False) -> OrgFacts:
        """The org's facts (describe once a day)."""
        return self._org.facts(self._access.get(), refresh=refresh)

    def find(self, names: FieldNames, intents: Sequence[Intent], *, task_keyed: bool,
             legacy_events: Collection[str] | None = None) -> Lookups:
        """The records the intents name (`legacy_events`: resolve.task_keys_of)."""
        return find(self._access.get(), names, intents, self._accounts, task_keyed=task_keyed,
                    legacy_events=legacy_events)

    def wrote_account(self, account_id: str, fields: dict[str, Any], names: FieldNames) -> None:
        """Remember a successful Account update."""
        self._accounts.wrote(account_id, fields, names)


class LazyWriter:
    """A writer of the Salesforce edge, made on first use: a run that writes nothing never connects."""

    sends = True

    def __init__(self, access: SalesforceAccess, make: Callable[[SalesforceGateway], Any]) -> None:
        self._access = access
        self._make = make

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """One result per op."""
        if not ops:
            return []
        result: list[WriteResult] = self._make(self._access.get()).write(ops)
        return result


def collections_writer(access: SalesforceAccess, *, workers: int,
                       sleep: Callable[[float], None] = time.sleep) -> LazyWriter:
    """sObject Collections, up to `workers` calls in flight within one kind of write."""
    return LazyWriter(access, lambda gw: CollectionsWriter(gw, workers=workers, sleep=sleep))


def bulk_writer(access: SalesforceAccess, *, sleep: Callable[[float], None] = time.sleep,
                waiting: Callable[[str], contextlib.AbstractContextManager[None]] | None = None) -> LazyWriter:
    """Bulk API 2.0 for updates and upserts, collections for creates; `waiting`: around each job (a stop's)."""
    return LazyWriter(access, lambda gw: BulkWriter(gw, sleep=sleep, waiting=waiting))


class PlanRecorder:
    """The dry run's writer: records each write it is given and sends nothing."""

    sends = False

    def __init__(self) -> None:
        self.planned: list[dict[str, Any]] = []

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """Record the plan; every write 'succeeds', so the plan goes on as if it had been sent."""
        self.planned.extend(describe_op(op) for op in ops)
        return [WriteResult(True) for _ in ops]
