"""The writes the Stripe stand-in serves, and the permissions of restricted keys.

- `POST /v1/customers/{id}` updates `metadata` (and `name`, `email`, `description`) as Stripe does: posted keys
  are merged into the customer's metadata, a key posted with an empty value is removed, and `metadata=""`
  removes them all (docs.stripe.com/metadata; Stripe API reference: Update a customer). It emits
  `customer.updated` with the changed keys' old values in `previous_attributes`.
- A restricted key (`rk_test_…`) made by `StripeSandbox.restricted_key(...)` has a permission per resource,
  none, read or write, as set in the Dashboard. A request it may not make is refused as Stripe refuses it:
  HTTP 403, type `invalid_request_error`, "The provided key 'rk_test_***…abc123' does not have the required
  permissions for this endpoint on account 'acct_…'. Having the 'rak_customer_write' permission would allow
  this request to continue." (observed responses quoted in stripe/stripe-cli#570 and stripe/stripe-node#2246;
  the SDKs map any 403 to a PermissionError). Keys not made that way keep full access.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from .stripe_server import StripeSandbox

Obj = dict[str, Any]
Access = Literal["read", "write"]

# Stripe's metadata limits (docs.stripe.com/metadata): 50 keys, keys up to 40 characters, values up to 500.
MAX_KEYS: Final = 50
MAX_KEY_LENGTH: Final = 40
MAX_VALUE_LENGTH: Final = 500
ACCOUNT_ID: Final = "acct_1SandboxStripeSf"

_PATH: Final = re.compile(r"^/v1/([a-z_]+)(?:/([^/]+))?/?$")
_UPDATABLE: Final = frozenset({"metadata", "name", "email", "description", "expand"})


def permission_name(resource: str, access: Access) -> str:
    """Stripe's name of a restricted-key permission, e.g. `rak_customer_write` (as in its 403 messages)."""
    return f"rak_{resource}_{access}"


def check_permission(sandbox: StripeSandbox, key: str, method: str, path: str) -> None:
    """Refuse (403) a request its restricted key may not make; other keys pass."""
    from .stripe_server import COLLECTIONS, StripeApiError

    granted = sandbox.restricted_keys.get(key)
    m = _PATH.match(path)
    if granted is None or not m or m.group(1) not in COLLECTIONS:
        return
    resource = COLLECTIONS[m.group(1)]
    need: Access = "read" if method == "GET" else "write"
    have = granted.get(resource)
    if have == "write" or have == need:
        return
    masked = key[:8] + "*" * max(0, len(key) - 14) + key[-6:]
    raise StripeApiError(
        403,
        f"The provided key '{masked}' does not have the required permissions for this endpoint on account "
        f"'{ACCOUNT_ID}'. Having the '{permission_name(resource, need)}' permission would allow this request "
        "to continue.",
    )


def route(sandbox: StripeSandbox, method: str, path: str, form: Obj) -> tuple[int, Obj] | None:
    """Answer a write the stand-in implements, or None (the caller answers as for any other write)."""
    m = _PATH.match(path)
    if method == "POST" and m and m.group(1) == "customers" and m.group(2):
        return 200, update_customer(sandbox, m.group(2), form)
    return None


def update_customer(sandbox: StripeSandbox, customer_id: str, form: Obj) -> Obj:
    """Update a customer; its new state, rendered in the account's version."""
    from .stripe_factory import render
    from .stripe_server import StripeApiError, _bad, _missing

    for name in form:
        if name not in _UPDATABLE:
            _bad(f"The Stripe sandbox does not implement the update parameter `{name}`.", param=name)
    with sandbox._lock:
        stored = sandbox._objects.get(customer_id)
        if stored is None or stored.get("object") != "customer":
            _missing("customer", customer_id, "id")
        if stored.get("deleted"):
            # Not verified against Stripe: a deleted customer is treated as gone for writes.
            raise StripeApiError(404, f"No such customer: '{customer_id}'", code="resource_missing", param="id")
        new = copy.deepcopy(stored)
        previous: Obj = {}
        if "metadata" in form:
            new["metadata"], changed = merged_metadata(stored.get("metadata") or {}, form["metadata"])
            if changed:
                previous["metadata"] = changed
        for name in ("name", "email", "description"):
            if name in form:
                value = form[name] or None  # an empty value unsets the field
                if value != stored.get(name):
                    previous[name] = stored.get(name)
                    new[name] = value
        if previous:
            sandbox.emit("customer.updated", new, created=sandbox.now(), previous_attributes=previous)
        return render(sandbox._objects[customer_id], sandbox.account_api_version, sandbox.links)


def merged_metadata(current: Mapping[str, str], posted: Any) -> tuple[dict[str, str], dict[str, str | None]]:
    """(new metadata, changed keys with their old values, None for a new key). `posted` is the form's
    `metadata` value: a mapping, or "" to remove every key."""
    from .stripe_server import _bad

    if posted == "":
        return {}, dict(current)
    if not isinstance(posted, Mapping):
        _bad("Invalid object", param="metadata")
    out = dict(current)
    changed: dict[str, str | None] = {}
    for key, value in posted.items():
        if not isinstance(value, str):
            _bad("Invalid string", param=f"metadata[{key}]")
        if len(key) > MAX_KEY_LENGTH:
            _bad(f"Metadata keys can have a maximum length of {MAX_KEY_LENGTH} characters.", param=f"metadata[{key}]")
        if len(value) > MAX_VALUE_LENGTH:
            _bad(f"Metadata values can have a maximum length of {MAX_VALUE_LENGTH} characters.",
                 param=f"metadata[{key}]")
        if value == "":
            if key in out:
                changed[key] = out.pop(key)
        elif out.get(key) != value:
            changed[key] = out.get(key)
            out[key] = value
    if len(out) > MAX_KEYS:
        _bad(f"You can only specify up to {MAX_KEYS} metadata keys.", param="metadata")
    return out, changed
