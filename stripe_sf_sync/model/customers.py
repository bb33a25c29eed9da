"""customer.* payloads -> CustomerChange."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stripe_sf_sync.model.changes import CustomerChange, EventMeta, MalformedEvent
from stripe_sf_sync.model.payload import _get, _metadata, _str


def parse_customer(event: Mapping[str, Any], meta: EventMeta) -> CustomerChange:
    """customer.* -> CustomerChange (its metadata and name)."""
    cus = _get(event, "data.object")
    if not isinstance(cus, Mapping):
        raise MalformedEvent("missing data.object")
    customer_id = _str(cus, "id", prefix="cus_")
    assert customer_id
    name = cus.get("name") if isinstance(cus.get("name"), str) else None
    return CustomerChange(meta=meta, customer_id=customer_id, metadata=_metadata(cus), name=name,
                          deleted=meta.event_type == "customer.deleted" or cus.get("deleted") is True)
