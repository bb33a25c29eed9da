"""CustomerChange and its parser (customer.*), and CachedCustomer (what state keeps of a customer)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stripe_sf_sync.model.event import EventMeta, MalformedEvent
from stripe_sf_sync.model.payload import _get, _metadata, _str


@dataclass(frozen=True)
class CustomerChange:
    """customer.created/updated/deleted: no rule, only the details its other events resolve by."""

    meta: EventMeta
    customer_id: str
    metadata: Mapping[str, str]
    name: str | None
    deleted: bool
    email: str = ""  # "" when the customer has none

    @property
    def object_id(self) -> str:
        """The order guard's key."""
        return self.customer_id


@dataclass(frozen=True)
class CustomerDeletedChange:
    """customer.deleted: the customer's Account is marked (salesforce.fields.account_customer_deleted) and kept;
    none of the customer's later events writes it. Its details are kept in state as a deleted customer's."""

    meta: EventMeta
    customer_id: str
    metadata: Mapping[str, str]  # the customer's, as it was: its salesforce_account_id finds the Account
    name: str | None

    @property
    def object_id(self) -> str:
        """The order guard's key: the customer's, as its other customer.* events."""
        return self.customer_id

    @property
    def details(self) -> CustomerChange:
        """What state keeps of it: a deleted customer."""
        return CustomerChange(self.meta, self.customer_id, self.metadata, self.name, deleted=True)


class CustomerDeleted(Exception):
    """Raised by hydration: the change's customer was deleted in Stripe before the change, so the change writes
    nothing. `mark`: the deletion was first learned by reading the customer (no customer.deleted event was
    seen), so this change marks its Account as the customer.deleted event would have."""

    def __init__(self, customer_id: str, *, mark: bool, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(f"customer {customer_id} was deleted in Stripe: its Account is kept as it is, and its "
                         "later events are not applied")
        self.customer_id = customer_id
        self.mark = mark
        self.metadata = dict(metadata or {})

    def as_change(self, meta: EventMeta) -> CustomerDeletedChange:
        """The deletion, as a customer.deleted event at `meta` would have told it."""
        return CustomerDeletedChange(meta, self.customer_id, self.metadata, None)


@dataclass(frozen=True)
class CachedCustomer:
    """The few customer details rules and the mapping read: metadata (Salesforce Ids), name and email. `version`
    is the time they were true at (event `created` or read time), so an older copy never replaces a newer one.
    `email`: None when not known (a customer kept before state version 4), "" when the customer has none."""

    customer_id: str
    metadata: Mapping[str, str]
    name: str | None
    deleted: bool
    version: int
    email: str | None = None



def parse_customer(event: Mapping[str, Any], meta: EventMeta) -> CustomerChange:
    """customer.* -> CustomerChange (its metadata and name)."""
    cus = _get(event, "data.object")
    if not isinstance(cus, Mapping):
        raise MalformedEvent("missing data.object")
    customer_id = _str(cus, "id", prefix="cus_")
    assert customer_id
    name = cus.get("name") if isinstance(cus.get("name"), str) else None
    return CustomerChange(meta=meta, customer_id=customer_id, metadata=_metadata(cus), name=name,
                          deleted=meta.event_type == "customer.deleted" or cus.get("deleted") is True,
                          email=customer_email(cus))


def parse_customer_deleted(event: Mapping[str, Any], meta: EventMeta) -> CustomerDeletedChange:
    """customer.deleted -> CustomerDeletedChange (the payload is the customer as it was: its metadata too)."""
    details = parse_customer(event, meta)
    return CustomerDeletedChange(meta, details.customer_id, details.metadata, details.name)


def customer_email(cus: Mapping[str, Any]) -> str:
    """A customer object's email, "" when it has none (null in Stripe)."""
    email = cus.get("email")
    return email if isinstance(email, str) else ""
