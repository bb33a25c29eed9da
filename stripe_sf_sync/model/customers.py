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


def customer_email(cus: Mapping[str, Any]) -> str:
    """A customer object's email, "" when it has none (null in Stripe)."""
    email = cus.get("email")
    return email if isinstance(email, str) else ""
