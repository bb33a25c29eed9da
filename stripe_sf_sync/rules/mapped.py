"""What the mapping's `from` values read of a change (salesforce.mapping; mapping.py): the paths into its Stripe
object and its customer, and its status, attached to each intent of its plan. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from stripe_sf_sync.mapping import FieldMapping, path_values
from stripe_sf_sync.rules.intents import AccountFieldsIntent, Plan


def with_sources(plan: Plan, change: Any, mapping: FieldMapping, data_object: Callable[[], Mapping[str, Any]]) -> Plan:
    """`plan` with each intent's `source` filled in, when the mapping names a `from`; `data_object()` decodes the
    event's object only then (a batch holds its events as compact JSON)."""
    if not mapping.sourced():
        return plan
    paths = mapping.paths()
    values: dict[str, Any] = path_values(
        paths, data_object() if paths else None, customer_name=getattr(change, "customer_name", None),
        customer_metadata=getattr(change, "customer_metadata", None),
        customer_email=getattr(change, "customer_email", None), products=getattr(change, "products", None))
    status = getattr(change, "status", None)
    if isinstance(status, str):
        values["status"] = status
    # An Account's mark (a customer deleted in Stripe) is its own field, never mapped.
    plan.intents = [it if isinstance(it, AccountFieldsIntent) else replace(it, source={**it.source, **values})
                    for it in plan.intents]
    return plan
