"""The batch step's collaborators, as small protocols, each defined here once: what it reads from state, how it
hydrates, how it finds and writes Salesforce records. The real ones sit at the edges (stripe/, salesforce/:
SalesforceRecords, the writers and the dry run's PlanRecorder; state/); tests use in-memory fakes. Their data
are plain types (records.py), so the pipeline imports no edge."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stripe_sf_sync import model
from stripe_sf_sync.config import FieldNames
from stripe_sf_sync.model import CachedCustomer
from stripe_sf_sync.pipeline.events import HeldEvent
from stripe_sf_sync.records import FieldReads, Lookups, OrgFacts, SfOp, WriteResult
from stripe_sf_sync.rules import Intent


class Ledger(Protocol):
    """What state knows of events and objects (read only: the batch step commits nothing itself)."""

    def outcomes_for(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Recorded outcomes of these events."""

    def versions_for(self, object_ids: Iterable[str]) -> dict[str, int]:
        """Newest applied event time per Stripe object (the order guard)."""


class Hydrator(Protocol):
    """Fills in what event payloads lack, a batch at a time."""

    def prepare(self, fresh: Sequence[tuple[HeldEvent, model.Change]],
                customer_changes: Sequence[model.CustomerChange]) -> list[CachedCustomer]:
        """Fetch for the whole batch; return the customer details the batch carries, for state to keep."""

    def hydrate(self, held: HeldEvent, change: model.Change, *, with_customer: bool = False) -> model.Change:
        """One change with what its rule needs (`with_customer`: its customer's details even when its own
        metadata seemed enough)."""

    def fresh_customers(self) -> list[CachedCustomer]:
        """Customers read from Stripe since the last call, for state to keep."""

    def customer_email(self, customer_id: str) -> str | None:
        """The customer's email, when this batch read the customer (identity.create_*); None when not known."""

    def current_state(self, held: HeldEvent, change: model.Change) -> model.Change:
        """The change with its object as Stripe holds it now (read once per object and batch), for an event
        whose order among its object's events of the same second is not known."""


class RecordLookup(Protocol):
    """Finds the Salesforce records a batch's intents name, and knows the org's facts."""

    @property
    def described(self) -> bool:
        """Whether the org was described in this run (its facts cannot be fresher)."""

    def org_facts(self, *, refresh: bool = False) -> OrgFacts:
        """The org's facts (checked against the config; raises its ConfigError)."""

    def find(self, names: FieldNames, intents: Sequence[Intent], *, task_keyed: bool,
             legacy_events: Collection[str] | None = None, reads: FieldReads = FieldReads(),
             stripe_account: str | None = None) -> Lookups:
        """Every record the intents name, in a few calls for the whole batch; the Tasks of `legacy_events`
        (None: of every event) also by the key an earlier version gave them (salesforce/lookups.py: task_keys_of);
        with the values of the fields in `reads` (the mapping's `if_empty`); with `stripe_account` and
        names.stripe_account, no Opportunity or Task of another Stripe account."""

    def wrote_account(self, account_id: str, fields: dict[str, Any], names: FieldNames) -> None:
        """An Account update succeeded: later batches of the run compare with what it now holds."""


class RecordWriter(Protocol):
    """Sends record writes; one result per op, in order."""

    sends: bool  # False for a writer that only records the plan (a dry run)

    def write(self, ops: Sequence[SfOp]) -> list[WriteResult]:
        """Write every op."""


@dataclass
class Ports:
    """Everything the batch step talks to."""

    ledger: Ledger
    hydrator: Hydrator
    lookup: RecordLookup
    writer: RecordWriter  # sObject Collections
    bulk_writer: RecordWriter  # Bulk API 2.0 (backfill above its threshold)
