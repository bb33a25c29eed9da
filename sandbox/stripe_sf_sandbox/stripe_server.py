"""A local stand-in of the Stripe API (v1), read-only but for customer updates (stripe_writes.py), over plain
HTTP on 127.0.0.1 (or HTTPS, like api.stripe.com, with a throwaway CA: `StripeSandbox(tls=True)`).

It serves the endpoints stripe-sf reads, with Stripe's list, cursor, filter, expand, error, auth,
rate-limit and API-version semantics, so the official `stripe` SDK can talk to it unchanged:

    with StripeSandbox() as sandbox:
        client = sandbox.client()
        client.v1.customers.retrieve("cus_...")

State is a dict of canonical objects (see `stripe_factory.render`) plus an append-only event log.
"""

from __future__ import annotations

import base64
import bisect
import json
import random
import re
import shutil
import socket
import ssl
import string
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, NoReturn
from urllib.parse import parse_qsl, urlsplit

import stripe

from stripe_sf_sandbox import stripe_accounts, stripe_writes
from stripe_sf_sandbox.faults import FaultPlan
from stripe_sf_sandbox.stripe_factory import (
    API_VERSION_CURRENT,
    ID_PREFIX_OBJECTS,
    Links,
    canonicalize,
    clone,
    is_pre_basil,
    is_valid_api_version,
    render,
)

Obj = dict[str, Any]
Body = Obj | str | bytes | None

# Events are only listable/retrievable for 30 days (Stripe docs, "List all events").
EVENT_RETENTION_S: Final = 30 * 86400
# `limit` ranges 1-100, default 10; `types` takes at most 20 names (Stripe API reference).
MAX_LIMIT: Final = 100
DEFAULT_LIMIT: Final = 10
MAX_EVENT_TYPES: Final = 20
# "Expansions have a maximum depth of four levels" (Stripe docs, Expanding responses).
MAX_EXPAND_DEPTH: Final = 4

_ALNUM: Final = string.ascii_letters + string.digits
_PATH_RE: Final = re.compile(r"^/v1/([a-z_]+)(?:/([^/]+))?/?$")
_KEY_RE: Final = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_ID_RE: Final = re.compile(r"^([a-z]+)_[A-Za-z0-9_]+$")

# Collection path -> the `object` value it holds.
COLLECTIONS: Final[Mapping[str, str]] = {
    "events": "event",
    "customers": "customer",
    "subscriptions": "subscription",
    "invoices": "invoice",
    "payment_intents": "payment_intent",
    "charges": "charge",
    "invoice_payments": "invoice_payment",
    "prices": "price",
    "products": "product",
    "subscription_items": "subscription_item",
    "refunds": "refund",
    "disputes": "dispute",
    "credit_notes": "credit_note",
    "coupons": "coupon",
}
_LIST_COMMON: Final = frozenset({"limit", "starting_after", "ending_before", "expand", "created"})
# Filters implemented per list endpoint (subset of Stripe's own list parameters).
_LIST_FILTERS: Final[Mapping[str, frozenset[str]]] = {
    "events": frozenset({"type", "types"}),
    "customers": frozenset({"email"}),
    "subscriptions": frozenset({"customer", "status", "collection_method", "price"}),
    "invoices": frozenset({"customer", "subscription", "status", "collection_method"}),
    "payment_intents": frozenset({"customer"}),
    "charges": frozenset({"customer", "payment_intent"}),
    "invoice_payments": frozenset({"invoice", "payment", "status"}),
    "prices": frozenset({"active", "product", "currency", "type"}),
    "products": frozenset({"active"}),
    "subscription_items": frozenset({"subscription"}),
    # Stripe API reference: List all refunds (charge, payment_intent), List all disputes (charge,
    # payment_intent), List all credit notes (customer, invoice).
    "refunds": frozenset({"charge", "payment_intent"}),
    "disputes": frozenset({"charge", "payment_intent"}),
    "credit_notes": frozenset({"customer", "invoice"}),
    "coupons": frozenset(),
}
# Real Stripe list parameters the sandbox does not implement: refused loudly rather than ignored.
_LIST_UNSUPPORTED: Final[Mapping[str, frozenset[str]]] = {
    "events": frozenset({"delivery_success"}),
    "customers": frozenset({"test_clock"}),
    "subscriptions": frozenset(
        {"automatic_tax", "current_period_end", "current_period_start", "test_clock", "customer_account"}
    ),
    "invoices": frozenset({"due_date", "customer_account"}),
    "charges": frozenset({"transfer_group"}),
    "payment_intents": frozenset(),
    "invoice_payments": frozenset(),
    "prices": frozenset({"lookup_keys", "recurring"}),
    "products": frozenset({"ids", "shippable", "url"}),
    "subscription_items": frozenset(),
    "refunds": frozenset(),
    "disputes": frozenset(),
    "credit_notes": frozenset({"customer_account"}),
    "coupons": frozenset(),
}
_SUBSCRIPTION_STATUSES: Final = frozenset(
    {
        "active",
        "all",
        "canceled",
        "ended",
        "incomplete",
        "incomplete_expired",
        "past_due",
        "paused",
        "trialing",
        "unpaid",
    }
)
_INVOICE_STATUSES: Final = frozenset({"draft", "open", "paid", "uncollectible", "void"})


def _rand_suffix(n: int) -> str:
    return "".join(random.choice(_ALNUM) for _ in range(n))


class StripeApiError(Exception):
    """An error response in Stripe's `{"error": {...}}` shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        err: Obj = {"type": type, "message": message}
        if code is not None:
            err["code"] = code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            err["param"] = param
        self.body: Obj = {"error": err}


def _bad(message: str, param: str | None = None, code: str | None = None) -> NoReturn:
    raise StripeApiError(400, message, param=param, code=code)


def _missing(kind: str, obj_id: str, param: str, status: int = 404) -> NoReturn:
    raise StripeApiError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def parse_query(query: str) -> Obj:
    """Decode Stripe's bracket form (`created[gte]=1`, `types[0]=a`, `expand[]=b`) into nested values."""
    root: Obj = {}
    for raw_key, value in parse_qsl(query, keep_blank_values=True):
        m = _KEY_RE.match(raw_key)
        if not m:
            _bad(f"Invalid parameter name: {raw_key}", param=raw_key)
        parts = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                _bad(f"Invalid array: {raw_key}", param=parts[0])
            if last:
                if part == "":
                    _bad(f"Invalid parameter name: {raw_key}", param=parts[0])
                node[part] = value
                break
            nxt = parts[i + 1]
            if nxt == "" or nxt.isdigit():  # `key[]` / `key[0]`: an array
                arr = node.setdefault(part, [])
                if not isinstance(arr, list):
                    _bad(f"Invalid array: {raw_key}", param=parts[0])
                if i + 2 == len(parts):
                    arr.append(value)
                    break
                _bad(f"Nested arrays of objects are not supported by the sandbox: {raw_key}", param=parts[0])
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                _bad(f"Invalid hash: {raw_key}", param=parts[0])
            node = child
    return root


def _int_param(value: Any, param: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        _bad(f"Invalid integer: {value}", param=param)
    return int(value)


def _walk(ordered: list[tuple[tuple[int, int], Obj]], lo: int, keep: Callable[[Obj], bool],
          created: Callable[[int], bool] | None, limit: int, after: int | None,
          before: int | None) -> tuple[list[Obj], bool]:
    """One page of a list, newest first, from `ordered` (oldest first; entries below `lo` are invisible).

    `before` (ending_before's position): the `limit` matches just newer than it; `after` (starting_after's):
    the `limit` matches just older; neither: the newest. Walks only as far as the page needs.
    """
    def match(o: Obj) -> bool:
        return keep(o) and (created is None or created(o.get("created") or 0))

    if before is not None:
        newer: list[Obj] = []
        for j in range(before + 1, len(ordered)):
            if match(ordered[j][1]):
                newer.append(ordered[j][1])
                if len(newer) > limit:
                    break
        return list(reversed(newer[:limit])), len(newer) > limit
    older: list[Obj] = []
    for j in range((after if after is not None else len(ordered)) - 1, lo - 1, -1):
        if match(ordered[j][1]):
            older.append(ordered[j][1])
            if len(older) > limit:
                break
    return older[:limit], len(older) > limit


def _created_filter(value: Any, param: str = "created") -> Callable[[int], bool]:
    """`created=<int>` (exact) or `created[gt|gte|lt|lte]=<int>` (Stripe's range filter)."""
    if isinstance(value, str):
        exact = _int_param(value, param)
        return lambda ts: ts == exact
    if not isinstance(value, dict):
        _bad(f"Invalid {param}", param=param)
    ops: dict[str, Callable[[int, int], bool]] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    checks: list[tuple[Callable[[int, int], bool], int]] = []
    for key, raw in value.items():
        if key not in ops:
            _bad(
                f"Received unknown parameter: {param}[{key}]",
                param=f"{param}[{key}]",
                code="parameter_unknown",
            )
        checks.append((ops[key], _int_param(raw, f"{param}[{key}]")))
    return lambda ts: all(op(ts, bound) for op, bound in checks)


def _str_param(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        _bad(f"Invalid string: {name}", param=name)
    return value


def _expand_paths(params: Mapping[str, Any]) -> list[str]:
    raw = params.get("expand")
    if raw is None:
        return []
    paths = [raw] if isinstance(raw, str) else raw
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        _bad("Invalid array", param="expand")
    for path in paths:
        if len(path.split(".")) > MAX_EXPAND_DEPTH:
            _bad(
                f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property. Property: {path}",
                param="expand",
            )
    return paths


def _generic_error_body(status: int) -> Obj:
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return {"error": {"type": kind, "message": f"Sandbox injected failure (HTTP {status})."}}


class _TokenBucket:
    """`rate` requests per second, bursting up to max(1, rate)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False


class StripeSandbox:
    """In-process fake of the Stripe v1 API for the demo and the tests (see module docstring)."""

    def __init__(
        self,
        *,
        now: Callable[[], int] | None = None,
        latency_ms: float = 0.0,
        rate_limit_per_s: float | None = None,
        endpoint_limit_per_s: float | None = None,
        should_retry_header: bool | None = None,
        api_key_prefixes: tuple[str, ...] = ("sk_test_", "rk_test_"),
        account_api_version: str = API_VERSION_CURRENT,
        tls: bool = False,
        live: bool = False,
    ) -> None:
        if not is_valid_api_version(account_api_version):
            raise ValueError(f"invalid Stripe API version {account_api_version!r}")
        self.now: Callable[[], int] = now or (lambda: int(time.time()))
        self.latency_ms = latency_ms
        self.rate_limit_per_s = rate_limit_per_s
        self.should_retry_header = should_retry_header
        self.api_key_prefixes = api_key_prefixes
        # Version used when a request carries no Stripe-Version header (the account default in Stripe).
        self.account_api_version = account_api_version
        # A live-mode stand-in (`live=True`): its key is `sk_live_…` and its events say `livemode: true`, so that
        # a live key meeting a sandbox org can be rehearsed; it is still this process, never Stripe.
        self.live = live
        if live:
            self.api_key_prefixes = ("sk_live_", "rk_live_")
        self.api_key = ("sk_live_sandbox_" if live else "sk_test_sandbox_") + _rand_suffix(24)
        # The account the keys belong to: GET /v1/account answers it (Stripe API reference, "Retrieve account":
        # with no id, the account of the key that makes the request).
        self.account_id = "acct_" + _rand_suffix(16)
        # False: the key is a restricted key without the Account read permission; GET /v1/account answers 403
        # (Stripe docs, "Restricted API keys": a request outside the key's permissions gets a permission error).
        self.account_readable = True
        # Other accounts behind the same base URL (`add_account`): a separate account with its own key, or a connected
        # account of this one, reached with this account's key and the Stripe-Account header. `platform` is the
        # account a connected account belongs to; `_root` the sandbox whose server answers for all of them.
        self.accounts: list[StripeSandbox] = []
        self.connected = False
        self.platform: StripeSandbox | None = None
        self._root: StripeSandbox = self
        # Whether a key no account issued is refused (401): None refuses it once accounts were added
        # (stripe_accounts.key_owner).
        self.strict_keys: bool | None = None
        # Mixed into a StripeFactory's seed so that the factories of two accounts never issue the same ids.
        self.id_salt = ""
        # Keys rolled or deleted in the Dashboard: Stripe answers 401 "Expired API Key provided".
        self.revoked_keys: set[str] = set()
        # Restricted keys made by `restricted_key`: key -> resource ("customer") -> "read" or "write".
        self.restricted_keys: dict[str, dict[str, stripe_writes.Access]] = {}
        self.base_url = ""
        # HTTPS with a trustme CA, as api.stripe.com serves: a client trusts it only through ca_path.
        self.tls = tls
        self.ca_path = ""
        self._tmpdir: str | None = None
        self.events: list[Obj] = []
        # Requests this account answered (the sandbox that serves also counts those refused before an account was
        # chosen, and numbers every request in request_count, as FaultPlan counts them).
        self.request_count = 0
        self.requests_log: list[tuple[str, str, Obj]] = []
        self.faults = FaultPlan()
        self.server_errors: list[str] = []
        self._objects: dict[str, Obj] = {}
        self._order: dict[str, int] = {}
        self._seq = 0
        self._event_index: dict[str, int] = {}
        # Events Stripe has created but does not list yet: its event list is eventually consistent
        # (reported by integrators, not documented by Stripe), see delay_listing.
        self._unlisted: set[str] = set()
        # List indexes, rebuilt when what they index changed (see _sorted_events, _sorted_objects).
        self._sorted: list[tuple[tuple[int, int], Obj]] = []
        self._sorted_keys: list[tuple[int, int]] = []
        self._sorted_mark: tuple[int, int | None, int | None] | None = None
        self._store_version = 0
        self._object_indexes: dict[str, tuple[int, list[tuple[tuple[int, int], Obj]], dict[str, int]]] = {}
        self._lock = threading.RLock()
        self._bucket = _TokenBucket(rate_limit_per_s) if rate_limit_per_s else None
        # Stripe limits each named API operation too (`GET /v1/subscriptions`, `GET /v1/customers/{id}`), by
        # default to 25 requests a second in live mode as in test mode (docs.stripe.com/rate-limits).
        self.endpoint_limit_per_s = endpoint_limit_per_s
        self._endpoint_buckets: dict[str, _TokenBucket] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        # Read-only views for rendering (no copies: render() copies what it returns).
        self._links = Links(get=self._get_raw, invoice_payments=self._raw_invoice_payments)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> StripeSandbox:
        """Listen on 127.0.0.1 on a free port, serving from a daemon thread."""
        if self._server is not None:
            return self
        self._server = _Server(_make_handler(self), self._tls_context() if self.tls else None)
        host, port = self._server.server_address[:2]
        self.base_url = f"{'https' if self.tls else 'http'}://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-sandbox",
            daemon=True,
        )
        self._thread.start()
        for account in self.accounts:
            account.base_url = self.base_url
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _tls_context(self) -> ssl.SSLContext:
        """A server context with a certificate for 127.0.0.1 from a new CA, written to `ca_path`."""
        import trustme  # the sandbox extra

        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._tmpdir = tempfile.mkdtemp(prefix="stripe-sandbox-")
        self.ca_path = f"{self._tmpdir}/ca.pem"
        ca.cert_pem.write_to_path(self.ca_path)
        return context

    def __enter__(self) -> StripeSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(
        self, *, stripe_version: str | None = None, max_network_retries: int = 2
    ) -> stripe.StripeClient:
        """An official SDK client pointed at this sandbox (at this account: a connected account's client sends
        the platform's key and `Stripe-Account`)."""
        if not self._root.base_url:
            raise RuntimeError("start() the sandbox first")
        return stripe.StripeClient(
            self.api_key,
            stripe_account=self.stripe_account_header,
            base_addresses={"api": self._root.base_url},
            stripe_version=stripe_version,
            max_network_retries=max_network_retries,
        )

    def add_account(self, *, connected: bool = False) -> StripeSandbox:
        """Another Stripe account served at the same base URL, with its own objects, events, ids, `account_id`
        and rate-limit buckets (Stripe's limits are "per Stripe account", docs.stripe.com/rate-limits). It is a
        StripeSandbox itself, so `StripeFactory(account)`, `put`, `emit`, `objects_of`, `client()` work on it.

        `connected=False`: a separate account with its own key (`.api_key`). `connected=True`: a connected account
        of this one; it has no key of its own: `.api_key` is this account's key, sent with `Stripe-Account:
        <account_id>` (`.stripe_account_header`), as a platform reads its connected accounts (docs.stripe.com/
        connect/authentication). Its events carry `account` (stripe_accounts.py)."""
        root = self._root
        account = StripeSandbox(now=lambda: root.now(), latency_ms=self.latency_ms,
                                rate_limit_per_s=self.rate_limit_per_s,
                                endpoint_limit_per_s=self.endpoint_limit_per_s,
                                should_retry_header=self.should_retry_header,
                                account_api_version=self.account_api_version, live=self.live)
        account.api_key_prefixes = self.api_key_prefixes
        account._root = root
        account.id_salt = ":" + account.account_id
        account.base_url = root.base_url
        if connected:
            account.connected = True
            account.platform = self
            account.api_key = self.api_key
        root.accounts.append(account)
        return account

    @property
    def stripe_account_header(self) -> str | None:
        """The Stripe-Account header that reaches this account with `.api_key`: its id when connected, else None."""
        return self.account_id if self.connected else None

    def restricted_key(self, **permissions: stripe_writes.Access) -> str:
        """A new restricted key (`rk_test_…`) with these permissions per resource, e.g. `customer="read"`;
        a resource not named has none (stripe_writes.py)."""
        key = "rk_test_sandbox_" + _rand_suffix(24)
        self.restricted_keys[key] = dict(permissions)
        return key

    # ----------------------------------------------------------------- state

    def put(self, obj: Obj) -> Obj:
        """Store (or replace) `obj` by id, converting older-version shapes to the canonical one."""
        with self._lock:
            return clone(self._put(obj))

    def _put(self, obj: Obj) -> Obj:
        """`put` without the defensive copy: returns the stored object itself."""
        if not isinstance(obj.get("id"), str):
            raise ValueError("a Stripe object needs a string id")
        canonical, extras = canonicalize(obj)
        if "object" not in canonical:
            prefix = canonical["id"].split("_", 1)[0]
            canonical["object"] = ID_PREFIX_OBJECTS.get(prefix, prefix)
        with self._lock:
            self._store(canonical)
            for link in extras:
                pi_id = link["payment"]["payment_intent"]
                already = any(
                    p.get("invoice") == link["invoice"]
                    and (p.get("payment") or {}).get("payment_intent") == pi_id
                    for p in self._raw_invoice_payments()
                )
                if not already:
                    self._store(link)
            return canonical

    def _store(self, canonical: Obj) -> None:
        """Store a canonical object this sandbox owns (callers pass a private copy)."""
        obj_id = canonical["id"]
        if obj_id not in self._order:  # replacing keeps the original insertion rank
            self._seq += 1
            self._order[obj_id] = self._seq
        self._objects[obj_id] = canonical
        self._store_version += 1  # invalidates the list indexes

    def delete_customer(self, customer_id: str) -> None:
        """Delete a customer as Stripe does: retrieving it then returns only `{id, object, deleted: true}`
        (Stripe API reference: Retrieve a customer), and the customer list no longer holds it."""
        with self._lock:
            if customer_id not in self._objects:
                raise ValueError(f"no customer {customer_id} to delete")
            self._store({"id": customer_id, "object": "customer", "deleted": True})

    def get(self, obj_id: str) -> Obj | None:
        """A copy of the stored (canonical) object, or None."""
        with self._lock:
            found = self._objects.get(obj_id)
            return clone(found) if found is not None else None

    def _get_raw(self, obj_id: str) -> Obj | None:
        return self._objects.get(obj_id)

    @property
    def links(self) -> Links:
        """Read-only, non-copying views of the store used for rendering (do not mutate what they return)."""
        return self._links

    def _raw_invoice_payments(self) -> list[Obj]:
        return [o for o in self._objects.values() if o.get("object") == "invoice_payment"]

    def objects_of(self, kind: str) -> list[Obj]:
        """Copies of every stored object whose `object` is `kind`, oldest inserted first."""
        with self._lock:
            found = [o for o in self._objects.values() if o.get("object") == kind]
            found.sort(key=lambda o: self._order[o["id"]])
            return clone(found)

    def emit(
        self,
        type: str,
        obj: Obj,
        *,
        created: int,
        previous_attributes: Obj | None = None,
        api_version: str = API_VERSION_CURRENT,
        store: bool = True,
        event_id: str | None = None,
        request: Obj | None = None,
    ) -> Obj:
        """Append an event whose `data.object` is `obj` frozen in `api_version`; also store `obj` by default.

        `request` defaults to a fresh API request id; pass `{"id": None, "idempotency_key": None}` for
        events Stripe raises by itself (renewals, retries).
        """
        if not is_valid_api_version(api_version):
            raise ValueError(f"invalid Stripe API version {api_version!r}")
        with self._lock:
            canonical = self._put(obj) if store else canonicalize(obj)[0]
            # The snapshot is rendered now, in the event's own version, and never changes afterwards.
            snapshot = render(canonical, api_version, self._links)
            data: Obj = {"object": snapshot}
            if previous_attributes is not None:
                data["previous_attributes"] = clone(previous_attributes)
            eid = event_id or "evt_" + _rand_suffix(24)
            if eid in self._event_ids():
                raise ValueError(f"duplicate event id {eid}")
            event: Obj = {
                "id": eid,
                "object": "event",
                "api_version": api_version,
                "created": int(created),
                "data": data,
                "livemode": self.live,
                "pending_webhooks": 0,
                "request": clone(request)
                if request is not None
                else {"id": "req_" + _rand_suffix(14), "idempotency_key": None},
                "type": type,
            }
            if self.connected:
                # A connected account's event names it (Stripe API reference, The Event object: `account`, "the
                # connected account that originates the event"; docs.stripe.com/connect/webhooks); the
                # platform's own events have no such attribute.
                event["account"] = self.account_id
            self.events.append(event)
            self._event_index[eid] = len(self.events) - 1
            return clone(event)

    def delay_listing(self, *event_ids: str) -> None:
        """Keep already-emitted events out of every listing (and retrieve) until `release_listing`.

        Stripe's event list is eventually consistent: an event can become listable seconds to a minute
        after newer events were listed (Stripe's docs do not state it; integrators report it, e.g.
        singer-io/tap-stripe's 5-minute lookback). A delayed event keeps the place its `created` and its
        emission order give it, so once released it sits behind the newer events a client has
        already listed: `ending_before=<a newer id>` never returns it, as with Stripe's own cursor.
        """
        with self._lock:
            known = self._event_ids()
            missing = [eid for eid in event_ids if eid not in known]
            if missing:
                raise KeyError(f"unknown events {missing}")
            self._unlisted.update(event_ids)

    def release_listing(self, *event_ids: str) -> None:
        """Make delayed events listable, at their place in the list (see `delay_listing`)."""
        with self._lock:
            self._unlisted.difference_update(event_ids)

    def _sorted_events(self) -> list[tuple[tuple[int, int], Obj]]:
        """Every event with its sort key (created, insertion order), oldest first; rebuilt when `events`
        changed (appended to, cleared, or replaced)."""
        n = len(self.events)
        mark = (n, id(self.events[-1]) if n else None, id(self.events[0]) if n else None)
        if self._sorted_mark != mark:
            self._sorted = sorted(((e["created"], i), e) for i, e in enumerate(self.events))
            self._sorted_keys = [k for k, _ in self._sorted]
            self._sorted_mark = mark
        return self._sorted

    def _event_page(self, keep: Callable[[Obj], bool], created: Callable[[int], bool] | None, limit: int,
                    after: str | None, before: str | None) -> tuple[list[Obj], bool]:
        """A page of visible events matching `keep`/`created`, newest first, as `_list` defines it."""
        ordered = self._sorted_events()
        keys = self._sorted_keys
        cutoff = int(self.now()) - EVENT_RETENTION_S
        lo = bisect.bisect_left(keys, (cutoff, -1))  # older events are past retention: invisible
        if self._unlisted:
            unlisted, listed = self._unlisted, keep
            keep = lambda e: e["id"] not in unlisted and listed(e)  # noqa: E731

        def position(obj_id: str, param: str) -> int:
            i = self._event_ids().get(obj_id)
            if i is None or self.events[i]["created"] < cutoff or obj_id in self._unlisted:
                _missing("event", obj_id, param, status=400)
            return bisect.bisect_left(keys, (self.events[i]["created"], i))

        return _walk(ordered, lo, keep, created, limit,
                     position(after, "starting_after") if after is not None else None,
                     position(before, "ending_before") if before is not None else None)

    def _sorted_objects(self, kind: str) -> tuple[list[tuple[tuple[int, int], Obj]], dict[str, int]]:
        """Stored objects of `kind` with their sort key, oldest first, and id -> position; rebuilt after
        any store."""
        mark = self._store_version
        cached = self._object_indexes.get(kind)
        if cached is None or cached[0] != mark:
            # A deleted customer is not listed, only retrieved (as `deleted: true`).
            ordered = sorted(((o.get("created") or 0, self._order[o["id"]]), o)
                             for o in self._objects.values() if o.get("object") == kind and not o.get("deleted"))
            cached = (mark, ordered, {o["id"]: j for j, (_, o) in enumerate(ordered)})
            self._object_indexes[kind] = cached
        return cached[1], cached[2]

    # ----------------------------------------------------------------- HTTP dispatch

    def _check_auth(self, header: str | None) -> str:
        # Stripe answers auth failures with HTTP 401 and type invalid_request_error (observed responses);
        # the SDK maps any 401 to stripe.AuthenticationError.
        key = None
        if header:
            scheme, _, cred = header.partition(" ")
            if scheme.lower() == "bearer":
                key = cred.strip()
            elif scheme.lower() == "basic":
                try:
                    key = base64.b64decode(cred.strip()).decode().split(":", 1)[0]
                except ValueError:
                    key = None
        if not key:
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization "
                "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:]
        if key.startswith(("sk_live_", "rk_live_")) and not self.live:
            raise StripeApiError(
                401,
                f"Invalid API Key provided: {masked}. This Stripe sandbox is test mode only; "
                "live mode keys (sk_live_/rk_live_) are refused.",
            )
        if not key.startswith(self.api_key_prefixes):
            raise StripeApiError(401, f"Invalid API Key provided: {masked}")
        if any(key in a.revoked_keys for a in stripe_accounts.every_account(self)):
            raise StripeApiError(401, f"Expired API Key provided: {masked}")
        return key

    def _handle(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Body, dict[str, str]]:
        """Process one request (`headers` keyed in lower case); returns (status, body, extra headers)."""
        parts = urlsplit(raw_path)
        path = parts.path
        with self._lock:
            self.request_count += 1
            n = self.request_count
            try:
                params = parse_query(parts.query if method == "GET" else body.decode("utf-8", "replace"))
                parse_error: StripeApiError | None = None
            except StripeApiError as exc:
                params, parse_error = {}, exc
            entry = (method, path, params)
            self.requests_log.append(entry)
        try:
            hook = self.faults.on_request
            if hook is not None:
                hook(n, method, path)
            hang = self.faults.hang_for(n)
            if hang:
                time.sleep(hang)
            if self.latency_ms:
                time.sleep(self.latency_ms / 1000.0)
            failure = self.faults.injected_for(n, method, path)
            if failure is not None:
                injected = failure.body if failure.body is not None else _generic_error_body(failure.status)
                return failure.status, injected, dict(failure.headers)
            key = self._check_auth(headers.get("authorization"))
            owner, target = stripe_accounts.resolve(self, key, headers.get("stripe-account"))
            if target is not self:
                stripe_accounts.move_log_entry(self, target, entry)
            if target._bucket is not None and not target._bucket.take():
                raise self._rate_limited("global-rate")
            if target.endpoint_limit_per_s and not target._endpoint_bucket(method, path).take():
                raise self._rate_limited("endpoint-rate")
            version = headers.get("stripe-version") or target.account_api_version
            if not is_valid_api_version(version):
                _bad(f"Invalid Stripe API version: {version}")
            if parse_error is not None:
                raise parse_error
            stripe_writes.check_permission(owner, key, method, path)
            if method == "GET" and path.rstrip("/") == "/v1/account":
                # The account the Stripe-Account header names, else the key's own (Stripe API reference,
                # "Retrieve account").
                return 200, stripe_accounts.account_object(owner, target, key), {"Stripe-Version": version}
            status, answer = target._route(method, path, params, version)
            return status, answer, {"Stripe-Version": version}
        except StripeApiError as exc:
            return exc.status, exc.body, exc.headers
        except Exception:
            self.server_errors.append(traceback.format_exc())
            print(f"stripe sandbox: internal error\n{self.server_errors[-1]}", file=sys.stderr)
            return 500, {"error": {"type": "api_error", "message": "Sandbox internal error."}}, {}

    def _rate_limited(self, reason: str) -> StripeApiError:
        # A 429 of a rate limiter says which one refused (docs.stripe.com/rate-limits: the
        # Stripe-Rate-Limited-Reason header: global-rate, global-concurrency, endpoint-rate,
        # endpoint-concurrency, resource-specific); a 429 without it is no rate limit (e.g. lock_timeout).
        extra = {"Stripe-Rate-Limited-Reason": reason}
        if self.should_retry_header is not None:
            # stripe-python retries a 429 only when this header says "true".
            extra["Stripe-Should-Retry"] = "true" if self.should_retry_header else "false"
        return StripeApiError(
            429,
            "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
            code="rate_limit",
            headers=extra,
        )

    def _endpoint_bucket(self, method: str, path: str) -> _TokenBucket:
        """The bucket of a named operation: the path with object ids as `{id}`."""
        parts = path.rstrip("/").split("/")
        name = method + " " + "/".join(p if i < 3 or p in COLLECTIONS else "{id}" for i, p in enumerate(parts))
        with self._lock:
            return self._endpoint_buckets.setdefault(name, _TokenBucket(self.endpoint_limit_per_s or 1.0))

    def _route(self, method: str, path: str, params: Obj, version: str) -> tuple[int, Obj]:
        m = _PATH_RE.match(path)
        if method != "GET":
            written = stripe_writes.route(self, method, path, params)
            if written is not None:
                return written
            if m and m.group(1) in COLLECTIONS:
                _bad(f"The Stripe sandbox is read-only: {method} {path} is not implemented.")
            raise StripeApiError(404, f"Unrecognized request URL ({method}: {path}).")
        if not m or m.group(1) not in COLLECTIONS:
            raise StripeApiError(404, f"Unrecognized request URL ({method}: {path}).")
        collection, obj_id = m.group(1), m.group(2)
        with self._lock:
            if obj_id is None:
                return 200, self._list(collection, params, version)
            return 200, self._retrieve(collection, obj_id, params, version)

    # ----------------------------------------------------------------- retrieve

    def _retrieve(self, collection: str, obj_id: str, params: Obj, version: str) -> Obj:
        kind = COLLECTIONS[collection]
        for key in params:
            if key != "expand":
                _bad(f"Received unknown parameter: {key}", param=key, code="parameter_unknown")
        paths = _expand_paths(params)
        if collection == "events":
            if paths:
                _bad(f"This property cannot be expanded ({paths[0]}).", param="expand")
            event = self._find_visible_event(obj_id)
            if event is None:
                _missing("event", obj_id, "id")
            return clone(event)  # rendered at emit time, in the event's own api_version
        stored = self._objects.get(obj_id)
        if stored is None or stored.get("object") != kind:
            _missing(kind, obj_id, "id")
        out = render(stored, version, self._links)
        return self._expand(out, paths, version)

    def _event_ids(self) -> dict[str, int]:
        """Event id -> position, rebuilt if `events` was edited directly (appended to, cleared)."""
        stale = len(self._event_index) != len(self.events) or any(
            self._event_index.get(e["id"]) != i for i, e in enumerate(self.events[-1:], len(self.events) - 1)
        )
        if stale:
            self._event_index = {e["id"]: i for i, e in enumerate(self.events)}
        return self._event_index

    def _find_visible_event(self, event_id: str) -> Obj | None:
        i = self._event_ids().get(event_id)
        if i is None:
            return None
        event = self.events[i]
        if event["created"] < int(self.now()) - EVENT_RETENTION_S:
            return None  # past the 30-day window Stripe keeps events for
        if event_id in self._unlisted:
            return None  # not visible yet (delay_listing)
        return event

    # ----------------------------------------------------------------- expand

    def _expand(self, obj: Obj, paths: Iterable[str], version: str) -> Obj:
        for path in paths:
            obj = self._expand_one(obj, path.split("."), path, version)
        return obj

    def _includable(self, obj: Obj, name: str, version: str) -> Any:
        """Fields Stripe only returns when expanded: basil+ `Invoice.payments`, `Price.currency_options`."""
        if obj.get("object") == "price" and name == "currency_options":
            stored = self._objects.get(str(obj.get("id"))) or {}
            options = stored.get("currency_options")
            if options is None:  # a single-currency Price: its default currency is its only option
                options = {
                    str(stored.get("currency")): {
                        "custom_unit_amount": stored.get("custom_unit_amount"),
                        "tax_behavior": stored.get("tax_behavior"),
                        "unit_amount": stored.get("unit_amount"),
                        "unit_amount_decimal": stored.get("unit_amount_decimal"),
                    }
                }
            return clone(options)
        if obj.get("object") == "charge" and name == "refunds":
            # Since 2022-11-15 a Charge's `refunds` list is returned only when expanded (Stripe changelog,
            # 2022-11-15: "Charge.refunds is no longer included by default"); newest first, a first page.
            found = [o for o in self._objects.values()
                     if o.get("object") == "refund" and o.get("charge") == obj.get("id")]
            found.sort(key=lambda o: (o.get("created") or 0, self._order[o["id"]]), reverse=True)
            return {"object": "list", "data": [render(o, version, self._links) for o in found[:10]],
                    "has_more": len(found) > 10, "total_count": len(found),
                    "url": f"/v1/charges/{obj['id']}/refunds"}
        if (obj.get("object"), name) in (("price", "tiers"), ("coupon", "applies_to")):
            return clone((self._objects.get(str(obj.get("id"))) or {}).get(name))
        if obj.get("object") == "invoice" and name == "payments" and not is_pre_basil(version):
            links = [p for p in self._raw_invoice_payments() if p.get("invoice") == obj.get("id")]
            links.sort(key=lambda p: (p.get("created") or 0, self._order[p["id"]]), reverse=True)
            return {
                "object": "list",
                "data": [render(p, version, self._links) for p in links],
                "has_more": False,
                "total_count": len(links),
                "url": f"/v1/invoices/{obj['id']}/payments",
            }
        return _NOT_INCLUDABLE

    def _expand_one(self, value: Any, segments: list[str], path: str, version: str) -> Any:
        if not segments:
            return value
        head, rest = segments[0], segments[1:]
        if not isinstance(value, dict):
            _bad(f"This property cannot be expanded ({path}).", param="expand")
        if value.get("object") == "list" and head == "data" and isinstance(value.get("data"), list):
            if not rest:
                _bad(f"This property cannot be expanded ({path}).", param="expand")
            value["data"] = [self._expand_one(item, rest, path, version) for item in value["data"]]
            return value
        if head in value:
            field_value = value[head]
        else:
            field_value = self._includable(value, head, version)
            if field_value is _NOT_INCLUDABLE:
                _bad(f"This property cannot be expanded ({path}).", param="expand")
            if not rest:  # an includable field is complete as it is: there is no id to expand
                value[head] = field_value
                return value
        if isinstance(field_value, str):
            field_value = self._expand_id(field_value, path, version)
        elif field_value is None:
            value[head] = None
            return value
        elif isinstance(field_value, list):
            field_value = [
                self._expand_id(v, path, version) if isinstance(v, str) else v for v in field_value
            ]
            field_value = [self._expand_one(v, rest, path, version) if rest else v for v in field_value]
            value[head] = field_value
            return value
        elif not isinstance(field_value, dict) or (not rest and "id" not in field_value):
            _bad(f"This property cannot be expanded ({path}).", param="expand")
        value[head] = self._expand_one(field_value, rest, path, version) if rest else field_value
        return value

    def _expand_id(self, obj_id: str, path: str, version: str) -> Obj:
        m = _ID_RE.match(obj_id)
        if not m or m.group(1) not in ID_PREFIX_OBJECTS:
            _bad(f"This property cannot be expanded ({path}).", param="expand")
        stored = self._objects.get(obj_id)
        if stored is None:
            # Real Stripe never holds a dangling id; in the sandbox it means the test forgot to put() it.
            _bad(f"Sandbox cannot expand {path}: '{obj_id}' is not in the sandbox store.", param="expand")
        return render(stored, version, self._links)

    # ----------------------------------------------------------------- lists

    def _check_list_params(self, collection: str, params: Obj) -> None:
        allowed = _LIST_COMMON | _LIST_FILTERS[collection]
        for key in params:
            if key in _LIST_UNSUPPORTED[collection]:
                _bad(f"The Stripe sandbox does not implement the list parameter `{key}`.", param=key)
            if key not in allowed:
                _bad(f"Received unknown parameter: {key}", param=key, code="parameter_unknown")

    def _list(self, collection: str, params: Obj, version: str) -> Obj:
        self._check_list_params(collection, params)
        limit = DEFAULT_LIMIT
        if "limit" in params:
            limit = _int_param(params["limit"], "limit")
            if limit < 1:
                _bad("This value must be greater than or equal to 1.", param="limit")
            if limit > MAX_LIMIT:
                _bad(
                    f"This value must be less than or equal to {MAX_LIMIT} (it currently is '{limit}').",
                    param="limit",
                )
        after = _str_param(params, "starting_after")
        before = _str_param(params, "ending_before")
        if after is not None and before is not None:
            _bad(
                "You may only specify one of these parameters: ending_before, starting_after.",
                param="ending_before",
            )
        paths = _expand_paths(params)
        for p in paths:
            if collection == "events":  # event payloads are snapshots: nothing inside them expands
                _bad(f"This property cannot be expanded ({p}).", param="expand")
            if not p.startswith("data."):
                _bad(
                    f"This property cannot be expanded ({p}). "
                    f"You may want to try expanding 'data.{p}' instead.",
                    param="expand",
                )
        created = _created_filter(params["created"]) if "created" in params else None

        if collection == "events":
            # Same answer as the general path below, walking a sorted index from the cursor instead of
            # sorting every event per request (that made the stand-in, not the client, the bottleneck).
            page, has_more = self._event_page(self._event_predicate(params), created, limit, after, before)
            # Not copied: stored events are immutable snapshots, and the page is only serialised.
            data = list(page)
            return {"object": "list", "data": data, "has_more": has_more, "url": "/v1/events"}
        kind = COLLECTIONS[collection]
        keep = self._object_predicate(collection, params)
        ordered, positions = (self._subscription_items(params) if collection == "subscription_items"
                              else self._sorted_objects(kind))

        def position(obj_id: str, param: str) -> int:
            if obj_id not in positions:  # unknown, or another type
                _missing(kind, obj_id, param, status=400)
            return positions[obj_id]

        # Newest first; equal `created` falls back to insertion order (later inserted = newer).
        page, has_more = _walk(ordered, 0, keep, created, limit,
                               position(after, "starting_after") if after is not None else None,
                               position(before, "ending_before") if before is not None else None)
        data = [render(o, version, self._links) for o in page]
        result: Obj = {"object": "list", "data": data, "has_more": has_more, "url": f"/v1/{collection}"}
        return self._expand(result, paths, version)

    def _subscription_items(self, params: Obj) -> tuple[list[tuple[tuple[int, int], Obj]], dict[str, int]]:
        """The items of `subscription` (required, as in Stripe: List all subscription items), oldest first, in
        canonical shape; they live inside their stored subscription, not on their own."""
        sub_id = _str_param(params, "subscription")
        if sub_id is None:
            _bad("Missing required param: subscription.", param="subscription", code="parameter_missing")
        sub = self._objects.get(sub_id)
        if sub is None or sub.get("object") != "subscription":
            _missing("subscription", sub_id, "subscription", status=400)
        items = [i for i in (sub.get("items") or {}).get("data") or [] if isinstance(i, dict)]
        ordered = sorted(((i.get("created") or 0, n), i) for n, i in enumerate(items))
        return ordered, {o["id"]: j for j, (_, o) in enumerate(ordered)}

    def _event_predicate(self, params: Obj) -> Callable[[Obj], bool]:
        single = _str_param(params, "type")
        many = params.get("types")
        if single is not None and many is not None:
            _bad("You may only specify one of these parameters: type, types.", param="types")
        if many is not None:
            if isinstance(many, str):
                many = [many]
            if not isinstance(many, list) or not all(isinstance(t, str) for t in many):
                _bad("Invalid array", param="types")
            if len(many) > MAX_EVENT_TYPES:
                _bad(
                    f"Invalid array: types may contain at most {MAX_EVENT_TYPES} elements "
                    f"(it has {len(many)}).",
                    param="types",
                )
            wanted = set(many)
            return lambda e: e["type"] in wanted
        if single is not None:
            # `*` is a wildcard: `customer.subscription.*` matches every subscription event.
            pattern = re.compile("^" + ".*".join(re.escape(p) for p in single.split("*")) + "$")
            return lambda e: bool(pattern.match(e["type"]))
        return lambda e: True

    def _object_predicate(self, collection: str, params: Obj) -> Callable[[Obj], bool]:
        checks: list[Callable[[Obj], bool]] = []
        for name in ("customer", "collection_method", "email", "currency", "product"):
            wanted = _str_param(params, name) if name in params else None
            if wanted is not None:
                # ignored below: mypy cannot infer a lambda with a default argument (python/mypy#15459)
                checks.append(lambda o, n=name, w=wanted: _ref_id(o.get(n)) == w)  # type: ignore[misc]
        if collection == "customers":
            # A deleted customer is retrieved as a stub ({id, object, deleted: true}) and never listed
            # (Stripe API reference: Delete a customer; List all customers).
            checks.append(lambda o: o.get("deleted") is not True)
        if collection == "subscriptions":
            status = _str_param(params, "status")
            if status is not None and status not in _SUBSCRIPTION_STATUSES:
                _bad(
                    f"Invalid status: must be one of {', '.join(sorted(_SUBSCRIPTION_STATUSES))}",
                    param="status",
                )
            if status is None:
                # "If no value is supplied, all subscriptions that have not been canceled are returned."
                checks.append(lambda o: o.get("status") != "canceled")
            elif status == "ended":
                checks.append(lambda o: o.get("status") in ("canceled", "incomplete_expired"))
            elif status != "all":
                # ignored below: mypy cannot infer a lambda with a default argument (python/mypy#15459)
                checks.append(lambda o, s=status: o.get("status") == s)  # type: ignore[misc]
            price = _str_param(params, "price")
            if price is not None:
                checks.append(
                    lambda o: any(
                        _ref_id(i.get("price")) == price for i in (o.get("items") or {}).get("data") or []
                    )
                )
        elif collection == "invoices":
            status = _str_param(params, "status")
            if status is not None:
                if status not in _INVOICE_STATUSES:
                    _bad(
                        f"Invalid status: must be one of {', '.join(sorted(_INVOICE_STATUSES))}",
                        param="status",
                    )
                checks.append(lambda o: o.get("status") == status)
            sub = _str_param(params, "subscription")
            if sub is not None:
                checks.append(
                    lambda o: (
                        _ref_id(
                            ((o.get("parent") or {}).get("subscription_details") or {}).get("subscription")
                        )
                        == sub
                    )
                )
        elif collection in ("charges", "refunds", "disputes", "credit_notes"):
            for name in ("payment_intent", "charge", "invoice"):
                ref = _str_param(params, name) if name in params else None
                if ref is not None:
                    # ignored below: mypy cannot infer a lambda with a default argument (python/mypy#15459)
                    checks.append(lambda o, n=name, r=ref: _ref_id(o.get(n)) == r)  # type: ignore[misc]
        elif collection == "invoice_payments":
            checks += self._invoice_payment_checks(params)
        elif collection in ("prices", "products") and "active" in params:
            active = _str_param(params, "active")
            if active not in ("true", "false"):
                _bad("Invalid boolean: active", param="active")
            checks.append(lambda o: bool(o.get("active")) == (active == "true"))
        if collection == "prices" and "type" in params:
            ptype = _str_param(params, "type")
            checks.append(lambda o: o.get("type") == ptype)
        return lambda o: all(check(o) for check in checks)

    def _invoice_payment_checks(self, params: Obj) -> list[Callable[[Obj], bool]]:
        checks: list[Callable[[Obj], bool]] = []
        inv = _str_param(params, "invoice")
        if inv is not None:
            checks.append(lambda o: o.get("invoice") == inv)
        status = _str_param(params, "status")
        if status is not None:
            if status not in ("canceled", "open", "paid"):
                _bad("Invalid status: must be one of canceled, open, paid", param="status")
            checks.append(lambda o: o.get("status") == status)
        payment = params.get("payment")
        if payment is not None:
            if not isinstance(payment, dict):
                _bad("Invalid hash", param="payment")
            for key in payment:
                if key not in ("type", "payment_intent", "payment_record"):
                    _bad(
                        f"Received unknown parameter: payment[{key}]",
                        param=f"payment[{key}]",
                        code="parameter_unknown",
                    )
            ptype = payment.get("type")
            if ptype not in ("payment_intent", "payment_record"):
                _bad(
                    "Missing required param: payment[type].", param="payment[type]", code="parameter_missing"
                )
            checks.append(lambda o: (o.get("payment") or {}).get("type") == ptype)
            ref = payment.get(ptype)
            if ref is not None:
                checks.append(lambda o: _ref_id((o.get("payment") or {}).get(ptype)) == ref)
        return checks


class _NotIncludable:
    pass


_NOT_INCLUDABLE: Final = _NotIncludable()


def _ref_id(value: Any) -> Any:
    """An expandable reference's id, whether it holds an id string or an expanded object."""
    return value.get("id") if isinstance(value, dict) else value


class _Server(ThreadingHTTPServer):
    """Plain HTTP, or HTTPS when given a context (the handshake runs in the request's thread)."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None) -> None:
        self._context = context
        super().__init__(("127.0.0.1", 0), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self._context is None:
            return sock, addr
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refuses the certificate hangs up in the handshake: expected, stay quiet."""
        if self._context is None:
            super().handle_error(request, client_address)


def _make_handler(sandbox: StripeSandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like api.stripe.com
        # Headers and body go out in separate sends: with Nagle's algorithm on, loopback stalls each
        # response for a 40 ms delayed ACK.
        disable_nagle_algorithm = True
        server_version = "stripe-sandbox"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            with sandbox._lock:
                sandbox._conns.add(self.connection)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                with sandbox._lock:
                    sandbox._conns.discard(self.connection)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the tests read requests_log instead

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = self.rfile.read(length) if length else b""  # always read: keeps keep-alive in sync
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, body, extra = sandbox._handle(self.command, self.path, headers, form)
            if isinstance(body, dict):
                payload = json.dumps(body).encode()  # compact: the C encoder is skipped when indenting
            elif isinstance(body, str):
                payload = body.encode()
            else:
                payload = body or b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                # Every Stripe response carries a Request-Id header.
                self.send_header("Request-Id", "req_" + _rand_suffix(14))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (e.g. after a hang)

        do_GET = _serve
        do_POST = _serve
        do_DELETE = _serve

    return Handler
