"""The Stripe sandbox, exercised through the official SDK over real HTTP (no mocks)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from stripe_sf_sandbox.stripe_factory import (
    API_VERSION_BASIL,
    API_VERSION_CLOVER,
    API_VERSION_CURRENT,
    API_VERSION_PRE_BASIL,
    StripeFactory,
)
from stripe_sf_sandbox.stripe_server import StripeSandbox

T0 = 1_790_000_000  # the sandbox clock in these tests
DAY = 86400
# Stripe's own example objects (stripe/openapi fixtures3.json), in shared/ beside the repository.
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "data" / "stripe-openapi-fixtures3.json"


class Clock:
    """A settable clock for retention tests."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture()
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture()
def sandbox(clock: Clock) -> Iterator[StripeSandbox]:
    with StripeSandbox(now=clock) as sb:
        yield sb
    assert not sb.server_errors  # no request crashed inside the sandbox


@pytest.fixture()
def factory(sandbox: StripeSandbox) -> StripeFactory:
    return StripeFactory(sandbox, seed=7)


@pytest.fixture()
def client(sandbox: StripeSandbox) -> stripe.StripeClient:
    return sandbox.client()


@pytest.fixture()
def world(factory: StripeFactory) -> dict[str, Any]:
    """A customer with an active subscription whose renewal invoice failed, plus a canceled subscription."""
    cus = factory.customer(
        "Ada Lovelace", "ada@example.com", {"sf_account_id": "001xx"}, created=T0 - 5 * DAY
    )
    price = factory.price(2000, "usd")
    sub = factory.subscription(cus["id"], [(price, 2)], created=T0 - 4 * DAY, metadata={"sf_opp": "006xx"})
    inv = factory.invoice(sub, cus["id"], 4000, "usd", created=T0 - 3 * DAY)
    failed = factory.invoice_payment_failed(inv, T0 - 3 * DAY + 60)
    old = factory.subscription(cus["id"], [(price, 1)], status="canceled", created=T0 - 10 * DAY)
    return {
        "customer": cus,
        "price": price,
        "sub": sub,
        "invoice": inv,
        "failed_event": failed,
        "old_sub": old,
    }


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten the SDK's retry backoff (0.5 s floor) so retry tests stay quick; the HTTP path is untouched."""
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.05)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.1)


def _emit_many(sandbox: StripeSandbox, factory: StripeFactory, n: int, start: int) -> list[str]:
    """n events with runs of equal `created` (ties must fall back to insertion order)."""
    cus = factory.customer("Evt Source", "evt@example.com", created=start - 10)
    ids = []
    for i in range(n):
        ev = sandbox.emit(
            "customer.updated", cus, created=start + i // 7, previous_attributes={"name": str(i)}
        )
        ids.append(ev["id"])
    return ids


# ------------------------------------------------------------------------------------------- auth


def test_missing_key_is_401_with_request_id(sandbox: StripeSandbox) -> None:
    resp = requests.get(sandbox.base_url + "/v1/customers", timeout=5)
    assert resp.status_code == 401
    assert resp.headers["Request-Id"].startswith("req_")
    assert "did not provide an API key" in resp.json()["error"]["message"]


@pytest.mark.parametrize("key", ["sk_live_abcdefghijklmnop1234", "pk_test_abcdefghijklmnop", "nonsense"])
def test_bad_keys_raise_authentication_error(sandbox: StripeSandbox, key: str) -> None:
    bad = stripe.StripeClient(key, base_addresses={"api": sandbox.base_url}, max_network_retries=2)
    with pytest.raises(stripe.AuthenticationError) as exc:
        bad.v1.customers.list()
    assert exc.value.http_status == 401
    if key.startswith("sk_live_"):
        assert "test mode" in str(exc.value)
        assert "abcdefghijklmnop" not in str(exc.value)  # keys are masked
    assert sandbox.request_count == 1  # a 401 is never retried


def test_restricted_test_key_and_basic_auth_accepted(sandbox: StripeSandbox) -> None:
    rk = stripe.StripeClient("rk_test_123456789012", base_addresses={"api": sandbox.base_url})
    assert rk.v1.customers.list().data == []
    resp = requests.get(sandbox.base_url + "/v1/customers", auth=(sandbox.api_key, ""), timeout=5)
    assert resp.status_code == 200


def test_a_revoked_key_is_refused_as_expired(sandbox: StripeSandbox) -> None:
    sandbox.revoked_keys.add(sandbox.api_key)
    with pytest.raises(stripe.AuthenticationError) as exc:
        sandbox.client().v1.customers.list()
    assert exc.value.http_status == 401 and "Expired API Key provided" in str(exc.value)
    assert sandbox.api_key not in str(exc.value)  # masked


# ------------------------------------------------------------------------------------------- events


def test_ending_before_auto_paging_yields_every_newer_event_once_in_order(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    ids = _emit_many(sandbox, factory, 351, T0 - DAY)
    cursor, newer = ids[0], ids[1:]
    before = sandbox.request_count
    got = [e.id for e in client.v1.events.list({"ending_before": cursor, "limit": 100}).auto_paging_iter()]
    assert got == newer  # oldest -> newest, each exactly once
    assert sandbox.request_count - before == 4  # 100 + 100 + 100 + 50, stopping on has_more=false
    pages = [p for m, p, q in sandbox.requests_log[before:]]
    assert pages == ["/v1/events"] * 4


def test_ending_before_page_is_the_limit_events_just_newer_newest_first(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    ids = _emit_many(sandbox, factory, 30, T0 - DAY)
    page = client.v1.events.list({"ending_before": ids[9], "limit": 5})
    assert [e.id for e in page.data] == list(reversed(ids[10:15]))
    assert page.has_more is True
    last = client.v1.events.list({"ending_before": ids[24], "limit": 5})
    assert [e.id for e in last.data] == list(reversed(ids[25:30])) and last.has_more is False


def test_default_listing_is_newest_first_and_starting_after_walks_back(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    ids = _emit_many(sandbox, factory, 25, T0 - DAY)
    first = client.v1.events.list()
    assert len(first.data) == 10 and first.has_more and first.url == "/v1/events"
    assert [e.id for e in client.v1.events.list({"limit": 100}).auto_paging_iter()] == list(reversed(ids))
    assert [e.id for e in client.v1.events.list({"limit": 7}).auto_paging_iter()] == list(reversed(ids))


def test_event_pages_match_a_brute_force_reference(
    sandbox: StripeSandbox, factory: StripeFactory, clock: Clock
) -> None:
    """The indexed event listing answers exactly what sorting every event per request would."""
    import random

    rng = random.Random(7)
    cus = factory.customer("Ref", "ref@example.com", created=T0 - 40 * 86400)
    kinds = ["customer.updated", "customer.created", "invoice.paid"]
    for _ in range(300):  # out of order, with ties and some past retention
        sandbox.emit(rng.choice(kinds), cus, created=T0 - rng.randint(0, 35 * 86400) // 3600 * 3600)
    cutoff = T0 - 30 * 86400
    visible = sorted(((e["created"], i), e) for i, e in enumerate(sandbox.events) if e["created"] >= cutoff)

    def reference(params: dict[str, Any]) -> tuple[list[str], bool]:
        types = params.get("types")
        lo = params.get("created[gte]", 0)
        pool = [(k, e) for k, e in reversed(visible) if (not types or e["type"] in types) and e["created"] >= lo]
        limit = params["limit"]
        if "ending_before" in params:
            bound = next(k for k, e in visible if e["id"] == params["ending_before"])
            newer = [e for k, e in pool if k > bound]
            return [e["id"] for e in newer[-limit:]], len(newer) > limit
        if "starting_after" in params:
            bound = next(k for k, e in visible if e["id"] == params["starting_after"])
            pool = [(k, e) for k, e in pool if k < bound]
        return [e["id"] for _, e in pool[:limit]], len(pool) > limit

    for _ in range(150):
        params: dict[str, Any] = {"limit": rng.choice([1, 3, 10, 100])}
        if rng.random() < 0.5:
            params["types"] = rng.sample(kinds, 2)
        if rng.random() < 0.3:
            params["created[gte]"] = T0 - rng.randint(0, 30) * 86400
        cursor = rng.choice(visible)[1]["id"]
        roll = rng.random()
        if roll < 0.4:
            params["ending_before"] = cursor
        elif roll < 0.8:
            params["starting_after"] = cursor
        query: dict[str, Any] = {k: v for k, v in params.items() if k != "types"}
        for n, t in enumerate(params.get("types", [])):
            query[f"types[{n}]"] = t
        resp = requests.get(sandbox.base_url + "/v1/events", params=query, timeout=5,
                            headers={"Authorization": f"Bearer {sandbox.api_key}"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert ([e["id"] for e in body["data"]], body["has_more"]) == reference(params), params


def test_object_pages_match_a_brute_force_reference(sandbox: StripeSandbox, factory: StripeFactory) -> None:
    """The indexed object listing (here customers, with created ties) answers what a full sort would."""
    import random

    rng = random.Random(8)
    made = [factory.customer(f"C{i}", f"c{i}@example.com", created=T0 - rng.randint(0, 40) * 3600)
            for i in range(250)]
    order = {c["id"]: i for i, c in enumerate(made)}
    newest_first = sorted(made, key=lambda c: (c["created"], order[c["id"]]), reverse=True)
    for _ in range(120):
        limit = rng.choice([1, 7, 100])
        query: dict[str, Any] = {"limit": limit}
        pool = newest_first
        if rng.random() < 0.3:
            query["created[lte]"] = T0 - rng.randint(0, 40) * 3600
            pool = [c for c in pool if c["created"] <= query["created[lte]"]]
        cursor = rng.choice(made)
        key = (cursor["created"], order[cursor["id"]])
        roll = rng.random()
        if roll < 0.4:
            query["ending_before"] = cursor["id"]
            newer = [c for c in pool if (c["created"], order[c["id"]]) > key]
            expected = ([c["id"] for c in newer[-limit:]], len(newer) > limit)
        else:
            if roll < 0.8:
                query["starting_after"] = cursor["id"]
                pool = [c for c in pool if (c["created"], order[c["id"]]) < key]
            expected = ([c["id"] for c in pool[:limit]], len(pool) > limit)
        resp = requests.get(sandbox.base_url + "/v1/customers", params=query, timeout=5,
                            headers={"Authorization": f"Bearer {sandbox.api_key}"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert ([c["id"] for c in body["data"]], body["has_more"]) == expected, query


def test_event_list_parameter_errors(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    ids = _emit_many(sandbox, factory, 3, T0 - DAY)
    with pytest.raises(stripe.InvalidRequestError, match="only specify one"):
        client.v1.events.list({"ending_before": ids[0], "starting_after": ids[1]})
    for bad in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            client.v1.events.list({"limit": bad})
        assert exc.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.events.list({"type": "invoice.paid", "types": ["invoice.paid"]})
    assert exc.value.param == "types"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.events.list({"types": [f"custom.event_{i}" for i in range(21)]})
    assert exc.value.param == "types" and exc.value.http_status == 400


def test_type_and_types_filters(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    cus = factory.customer("F", "f@example.com", created=T0 - DAY)
    names = [
        "customer.subscription.created",
        "customer.subscription.updated",
        "invoice.paid",
        "invoice.payment_failed",
        "customer.subscription.deleted",
        "payment_intent.succeeded",
    ]
    for i, name in enumerate(names * 3):
        sandbox.emit(name, cus, created=T0 - 100 + i)
    listed = client.v1.events.list({"types": ["invoice.paid", "invoice.payment_failed"], "limit": 100})
    assert sorted({e.type for e in listed.data}) == ["invoice.paid", "invoice.payment_failed"]
    assert len(listed.data) == 6
    twenty = client.v1.events.list({"types": ["invoice.paid"] + [f"x.y{i}" for i in range(19)]})
    assert {e.type for e in twenty.data} == {"invoice.paid"}
    wild = client.v1.events.list({"type": "customer.subscription.*", "limit": 100})
    assert len(wild.data) == 9 and all(e.type.startswith("customer.subscription.") for e in wild.data)
    exact = client.v1.events.list({"type": "invoice.paid", "limit": 100})
    assert len(exact.data) == 3


def test_created_filters(sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient) -> None:
    cus = factory.customer("C", "c@example.com", created=T0 - DAY)
    for i in range(10):
        sandbox.emit("customer.updated", cus, created=T0 - 1000 + i * 10)
    created = [e.created for e in client.v1.events.list({"created": {"gte": T0 - 950, "lt": T0 - 920}}).data]
    assert created == [T0 - 930, T0 - 940, T0 - 950]
    assert [e.created for e in client.v1.events.list({"created": {"gt": T0 - 920}}).data] == [T0 - 910]
    assert len(client.v1.events.list({"created": {"lte": T0 - 980}}).data) == 3
    assert [e.created for e in client.v1.events.list({"created": T0 - 960}).data] == [T0 - 960]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list({"created": {"after": 5}})


def test_an_event_listed_late_sits_behind_newer_events_already_listed(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    """Stripe's event list is eventually consistent (reported by integrators): an event can become listable after
    newer ones were listed, at the place its `created` gives it, so a cursor already past it never sees it."""
    cus = factory.customer("L", "l@example.com", created=T0 - DAY)

    def emit(at: int) -> str:
        return str(sandbox.emit("customer.updated", cus, created=at)["id"])

    a = emit(T0 - 100)
    x = emit(T0 - 90)
    b = emit(T0 - 80)
    y = emit(T0 - 70)  # created in the same second as c, and before it
    c = emit(T0 - 70)
    sandbox.delay_listing(x, y)

    def ids(params: dict[str, Any]) -> list[str]:
        return [e.id for e in client.v1.events.list({"limit": 100, **params}).data]

    assert ids({}) == [c, b, a]  # a client lists up to c and keeps it as its cursor
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.events.retrieve(x)
    assert exc.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.events.list({"ending_before": x})
    assert exc.value.http_status == 400 and exc.value.code == "resource_missing"

    d = emit(T0 - 60)
    sandbox.release_listing(x, y)
    z = emit(T0 - 85)  # appended now with an older `created`: it, too, sits at its `created` place
    assert ids({}) == [d, c, y, b, z, x, a]
    # The cursor never returns what sorts behind it, however late it became listable ...
    assert ids({"ending_before": c}) == [d]
    assert [e.id for e in client.v1.events.list({"ending_before": c, "limit": 1}).auto_paging_iter()] == [d]
    assert ids({"ending_before": a}) == [d, c, y, b, z, x]
    # ... while walking back and the `created` filters find it where its `created` puts it.
    assert ids({"starting_after": c}) == [y, b, z, x, a]
    assert ids({"starting_after": b, "limit": 2}) == [z, x]
    assert ids({"created": {"gte": T0 - 90, "lte": T0 - 70}}) == [c, y, b, z, x]
    assert ids({"created": {"gte": T0 - 70}}) == [d, c, y]
    assert ids({"created": {"lt": T0 - 70, "gt": T0 - 100}, "starting_after": b}) == [z, x]
    assert client.v1.events.retrieve(x).id == x


def test_thirty_day_retention(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient, clock: Clock
) -> None:
    cus = factory.customer("R", "r@example.com", created=T0 - 40 * DAY)
    old = sandbox.emit("customer.updated", cus, created=T0 - 31 * DAY)
    edge = sandbox.emit("customer.updated", cus, created=T0 - 30 * DAY)
    fresh = sandbox.emit("customer.updated", cus, created=T0 - DAY)
    assert [e.id for e in client.v1.events.list().data] == [fresh["id"], edge["id"]]
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.events.retrieve(old["id"])
    assert exc.value.http_status == 404 and exc.value.code == "resource_missing"
    for param in ("ending_before", "starting_after"):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            client.v1.events.list({param: old["id"]})
        assert exc.value.http_status == 400
        assert exc.value.code == "resource_missing" and exc.value.param == param
        assert f"No such event: '{old['id']}'" in str(exc.value)
    clock.t += 2 * DAY  # time passes: the edge event expires too, and is now a dead cursor
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.events.list({"ending_before": edge["id"]}).auto_paging_iter().__next__()
    assert exc.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list({"ending_before": "evt_doesnotexist00000000000"})


def test_event_snapshot_is_frozen_in_its_own_version(
    sandbox: StripeSandbox, factory: StripeFactory, world: dict[str, Any]
) -> None:
    sub = world["sub"]
    pre = sandbox.emit(
        "customer.subscription.updated",
        sub,
        created=T0 - 60,
        api_version=API_VERSION_PRE_BASIL,
        previous_attributes={"status": "trialing"},
    )
    factory.subscription_updated(sub, {"status": "past_due"}, T0 - 30)
    got = sandbox.client().v1.events.retrieve(pre["id"])  # the client asks for the current version
    assert got.api_version == API_VERSION_PRE_BASIL
    assert got.data.object.status == "active" and "current_period_end" in got.data.object
    assert got.data.previous_attributes.to_dict() == {"status": "trialing"}
    assert set(pre) == {
        "id",
        "object",
        "api_version",
        "created",
        "data",
        "livemode",
        "pending_webhooks",
        "request",
        "type",
    }
    assert re.fullmatch(r"req_[A-Za-z0-9]{14}", pre["request"]["id"])


# ------------------------------------------------------------------------------------------- objects


def test_unknown_ids_are_404_resource_missing(sandbox: StripeSandbox, client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.customers.retrieve("cus_x")
    err = exc.value
    assert err.http_status == 404 and err.code == "resource_missing"
    assert err.user_message == "No such customer: 'cus_x'"
    assert err.request_id is not None and err.request_id.startswith("req_")
    resp = requests.get(
        sandbox.base_url + "/v1/nope", headers={"Authorization": f"Bearer {sandbox.api_key}"}, timeout=5
    )
    assert resp.status_code == 404 and "Request-Id" in resp.headers


def test_a_deleted_customer_is_retrieved_as_deleted_and_never_listed(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    """Stripe API reference: retrieving a deleted Customer returns a subset with `deleted: true`; the
    customer list holds live customers only, newest first, with the `created` range filter."""
    kept = [factory.customer(f"C{i}", f"c{i}@example.com", created=T0 - (10 - i) * DAY) for i in range(3)]
    gone = factory.customer("Gone", "gone@example.com", {"salesforce_account_id": "001x"}, created=T0 - 5 * DAY)
    sandbox.delete_customer(gone["id"])
    got = client.v1.customers.retrieve(gone["id"])
    assert got.id == gone["id"] and got.deleted is True and "metadata" not in got
    listed = [c.id for c in client.v1.customers.list({"limit": 100}).data]
    assert listed == [c["id"] for c in reversed(kept)]
    bounded = client.v1.customers.list({"limit": 100, "created": {"lte": T0 - 9 * DAY}}).data
    assert [c.id for c in bounded] == [kept[1]["id"], kept[0]["id"]]


def test_expand_on_retrieve(world: dict[str, Any], client: stripe.StripeClient) -> None:
    inv = client.v1.invoices.retrieve(
        world["invoice"]["id"], {"expand": ["payments.data.payment.payment_intent", "customer"]}
    )
    assert inv.customer.id == world["customer"]["id"] and inv.customer.object == "customer"
    pay = inv.payments.data[0]
    assert pay.object == "invoice_payment" and pay.invoice == inv.id
    pi = pay.payment.payment_intent
    assert pi.object == "payment_intent" and pi.status == "requires_payment_method"
    assert pi.last_payment_error.code == "card_declined" and pi.last_payment_error.type == "card_error"
    assert "payments" not in client.v1.invoices.retrieve(inv.id)  # includable only when expanded

    pi2 = client.v1.payment_intents.retrieve(pi.id, {"expand": ["latest_charge", "customer"]})
    assert pi2.latest_charge.failure_code == "card_declined" and pi2.customer.email == "ada@example.com"
    sub = client.v1.subscriptions.retrieve(world["sub"]["id"], {"expand": ["customer", "latest_invoice"]})
    assert sub.customer.name == "Ada Lovelace" and sub.latest_invoice.id == inv.id

    for bad in ("currency", "nonexistent", "a.b.c.d.e", "customer.name"):
        with pytest.raises(stripe.InvalidRequestError) as exc:
            client.v1.invoices.retrieve(inv.id, {"expand": [bad]})
        assert exc.value.param == "expand"


def test_list_expand_data_customer_and_subscription_status(
    world: dict[str, Any], client: stripe.StripeClient
) -> None:
    params: dict[str, Any] = {
        "status": "all",
        "created": {"gte": T0 - 30 * DAY},
        "expand": ["data.customer"],
        "limit": 100,
    }
    subs = list(client.v1.subscriptions.list(params).auto_paging_iter())
    assert [s.id for s in subs] == [world["sub"]["id"], world["old_sub"]["id"]]  # newest first
    assert all(s.customer.object == "customer" for s in subs)
    default = client.v1.subscriptions.list()
    assert [s.id for s in default.data] == [world["sub"]["id"]]  # canceled excluded by default
    assert [s.id for s in client.v1.subscriptions.list({"status": "canceled"}).data] == [
        world["old_sub"]["id"]
    ]
    assert client.v1.subscriptions.list({"customer": "cus_other"}).data == []
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.list({"expand": ["customer"]})  # lists need the data. prefix
    with pytest.raises(stripe.InvalidRequestError) as exc:
        client.v1.subscriptions.list({"bogus": "1"})
    assert exc.value.code == "parameter_unknown"


def test_other_lists_and_their_filters(world: dict[str, Any], client: stripe.StripeClient) -> None:
    sub_id, inv_id = world["sub"]["id"], world["invoice"]["id"]
    invs = client.v1.invoices.list({"subscription": sub_id, "status": "open"})
    assert [i.id for i in invs.data] == [inv_id]
    assert client.v1.invoices.list({"status": "paid"}).data == []
    cus_id = world["customer"]["id"]
    pis = client.v1.payment_intents.list({"customer": cus_id})
    assert len(pis.data) == 1
    charges = client.v1.charges.list({"payment_intent": pis.data[0].id})
    assert charges.data[0].status == "failed"
    assert [c.id for c in client.v1.customers.list({"email": "ada@example.com"}).data] == [cus_id]


def test_invoice_payments_filters(world: dict[str, Any], client: stripe.StripeClient) -> None:
    inv_id = world["invoice"]["id"]
    by_invoice = client.v1.invoice_payments.list({"invoice": inv_id})
    assert len(by_invoice.data) == 1
    link = by_invoice.data[0]
    assert re.fullmatch(r"inpay_[A-Za-z0-9]{24}", link.id)
    pi_id = link.payment.payment_intent
    by_pi = client.v1.invoice_payments.list({"payment": {"type": "payment_intent", "payment_intent": pi_id}})
    assert [p.id for p in by_pi.data] == [link.id]
    none = client.v1.invoice_payments.list(
        {"payment": {"type": "payment_intent", "payment_intent": "pi_nope"}}
    )
    assert none.data == []
    assert client.v1.invoice_payments.retrieve(link.id).invoice == inv_id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_payments.list({"payment": {"payment_intent": pi_id}})  # type is required


# ------------------------------------------------------------------------------------------- versions


def test_pre_basil_and_basil_shapes(sandbox: StripeSandbox, world: dict[str, Any]) -> None:
    sub_id, inv_id = world["sub"]["id"], world["invoice"]["id"]
    old = sandbox.client(stripe_version=API_VERSION_PRE_BASIL)
    sub = old.v1.subscriptions.retrieve(sub_id)
    assert sub.current_period_end > sub.current_period_start
    assert "current_period_end" not in sub["items"].data[0]
    inv = old.v1.invoices.retrieve(inv_id)
    assert (
        inv.subscription == sub_id and inv.payment_intent.startswith("pi_") and inv.charge.startswith("ch_")
    )
    assert "parent" not in inv and inv.paid is False
    assert inv.lines.data[0].price.id == world["price"]["id"]
    assert old.v1.payment_intents.retrieve(inv.payment_intent).invoice == inv_id
    assert old.v1.charges.retrieve(inv.charge).invoice == inv_id

    for version in (API_VERSION_BASIL, API_VERSION_CLOVER, API_VERSION_CURRENT):
        new = sandbox.client(stripe_version=version)
        sub = new.v1.subscriptions.retrieve(sub_id)
        assert "current_period_end" not in sub and sub["items"].data[0].current_period_end > 0
        inv = new.v1.invoices.retrieve(inv_id)
        assert inv.parent.subscription_details.subscription == sub_id
        assert inv.parent.subscription_details.metadata.to_dict() == {"sf_opp": "006xx"}
        for gone in ("subscription", "payment_intent", "charge", "paid"):
            assert gone not in inv
        pi_id = sandbox.objects_of("invoice_payment")[0]["payment"]["payment_intent"]
        assert "invoice" not in new.v1.payment_intents.retrieve(pi_id)
        assert "invoice" not in new.v1.charges.retrieve(new.v1.payment_intents.retrieve(pi_id).latest_charge)
    with pytest.raises(stripe.InvalidRequestError):
        sandbox.client(stripe_version="not-a-version").v1.customers.list()


def test_put_accepts_pre_basil_shapes(sandbox: StripeSandbox) -> None:
    factory = StripeFactory(sandbox, seed=3, api_version=API_VERSION_PRE_BASIL)
    cus = factory.customer("Old", "old@example.com", created=T0 - DAY)
    price = factory.price(900, "eur")
    sub = factory.subscription(cus["id"], [(price, 1)], created=T0 - DAY)
    assert "current_period_start" in sub and "current_period_start" not in sub["items"]["data"][0]
    pi = factory.payment_intent(cus["id"], 900, "eur", created=T0 - DAY)
    legacy_inv = factory.invoice(sub, cus["id"], 900, "eur", status="paid", payment_intent=pi)
    assert legacy_inv["subscription"] == sub["id"] and legacy_inv["payment_intent"] == pi["id"]
    stored = sandbox.put(legacy_inv)  # a pre-basil invoice is stored canonically
    assert stored["parent"]["subscription_details"]["subscription"] == sub["id"]
    assert "payment_intent" not in stored
    assert len([p for p in sandbox.objects_of("invoice_payment") if p["invoice"] == legacy_inv["id"]]) == 1


# ------------------------------------------------------------------------------------------- faults


def test_429_without_retry_header_is_not_retried(clock: Clock) -> None:
    for header in (None, False):
        with StripeSandbox(now=clock, rate_limit_per_s=1, should_retry_header=header) as sb:
            client = sb.client(max_network_retries=2)
            client.v1.customers.list()
            with pytest.raises(stripe.RateLimitError) as exc:
                client.v1.customers.list()
            assert exc.value.http_status == 429
            assert (exc.value.json_body or {})["error"]["code"] == "rate_limit"
            assert sb.request_count == 2
            assert (exc.value.headers or {}).get("stripe-should-retry") == (
                None if header is None else "false"
            )


def test_429_with_should_retry_true_is_retried(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    # Back off for >= 1 s so the 1 request/s bucket has refilled when the SDK retries.
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 1.05)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 2.0)
    with StripeSandbox(now=clock, rate_limit_per_s=1, should_retry_header=True) as sb:
        client = sb.client(max_network_retries=2)
        client.v1.customers.list()
        assert client.v1.customers.list().data == []  # 429 (Stripe-Should-Retry: true), then retried
        assert sb.request_count == 3


def test_500_is_retried_by_the_sdk(sandbox: StripeSandbox, client: stripe.StripeClient) -> None:
    sandbox.faults.fail_request(1, 500, {"error": {"type": "api_error", "message": "boom"}})
    assert client.v1.customers.list().data == []
    assert sandbox.request_count == 2
    sandbox.faults.fail_matching("GET", r"^/v1/customers/", 503, None, times=3)
    with pytest.raises(stripe.APIError):
        client.v1.customers.retrieve("cus_whatever")
    assert sandbox.request_count == 5  # first try + 2 retries, all failed


def test_hang_and_on_request_hook(sandbox: StripeSandbox) -> None:
    seen: list[tuple[int, str, str]] = []
    sandbox.faults.on_request = lambda n, method, path: seen.append((n, method, path))
    sandbox.faults.hang_request(1, 0.6)
    impatient = stripe.StripeClient(
        sandbox.api_key,
        base_addresses={"api": sandbox.base_url},
        max_network_retries=2,
        http_client=stripe.RequestsClient(timeout=0.2),
    )
    assert impatient.v1.customers.list().data == []  # the timed-out first try is retried
    assert seen[:2] == [(1, "GET", "/v1/customers"), (2, "GET", "/v1/customers")]


def test_latency_and_concurrency(clock: Clock) -> None:
    with StripeSandbox(now=clock, latency_ms=50) as sb:
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                sb.client().v1.customers.list()
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and sb.request_count == 8


# ------------------------------------------------------------------------------------------- factory


def test_factory_emitters(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    cus = factory.customer("Bo", "bo@example.com", created=T0 - 9 * DAY)
    basic, pro = factory.price(1000, "usd"), factory.price(3000, "usd", product_name="Pro")
    sub = factory.subscription(cus["id"], [(basic, 1)], created=T0 - 8 * DAY)
    created = factory.subscription_created(sub, T0 - 8 * DAY)
    assert created["type"] == "customer.subscription.created" and created["request"]["id"].startswith("req_")

    upd = factory.subscription_updated(sub, {"items": [(pro, 2)], "metadata": {"tier": "pro"}}, T0 - 7 * DAY)
    prev = upd["data"]["previous_attributes"]
    assert prev["metadata"] == {"tier": None}
    assert prev["items"]["data"][0]["price"]["id"] == basic["id"]  # arrays included whole
    assert set(prev) == {"items", "metadata"}
    assert client.v1.subscriptions.retrieve(sub["id"])["items"].data[0].price.id == pro["id"]

    sched = factory.subscription_updated(sub, {"cancel_at_period_end": True}, T0 - 6 * DAY - 60)
    end = sched["data"]["object"]["items"]["data"][0]["current_period_end"]
    assert sched["data"]["object"]["cancel_at"] == end
    assert sched["data"]["previous_attributes"] == {
        "cancel_at_period_end": False,
        "cancel_at": None,
        "canceled_at": None,
        "cancellation_details": {"reason": None},
    }
    factory.subscription_updated(sub, {"cancel_at_period_end": False}, T0 - 6 * DAY - 30)
    st = factory.subscription_updated(sub, {"status": "past_due"}, T0 - 6 * DAY)
    assert st["data"]["previous_attributes"] == {"status": "active"}

    gone = factory.subscription_deleted(sub, T0 - 5 * DAY)
    obj = gone["data"]["object"]
    assert gone["type"] == "customer.subscription.deleted" and obj["status"] == "canceled"
    assert obj["ended_at"] == T0 - 5 * DAY and obj["cancellation_details"]["reason"] == "payment_failed"

    inv = factory.invoice(None, cus["id"], 500, "usd", billing_reason="manual", created=T0 - 4 * DAY)
    failed = factory.invoice_payment_failed(inv, T0 - 4 * DAY, decline_code="generic_decline")
    assert failed["type"] == "invoice.payment_failed" and failed["request"]["id"] is None
    assert failed["data"]["object"]["attempt_count"] == 1
    again = factory.invoice_payment_failed(inv, T0 - 4 * DAY + 3600, decline_code="generic_decline")
    assert again["data"]["object"]["attempt_count"] == 2
    assert "previous_attributes" not in again["data"]
    link = client.v1.invoice_payments.list({"invoice": inv["id"]}).data[0]
    pi = client.v1.payment_intents.retrieve(link.payment.payment_intent, {"expand": ["latest_charge"]})
    assert pi.last_payment_error.decline_code == "generic_decline"
    assert (
        pi.latest_charge.failure_code == "card_declined"
        and pi.latest_charge.outcome.type == "issuer_declined"
    )

    ok = factory.payment_succeeded(pi.id, T0 - 3 * DAY)
    assert ok["type"] == "payment_intent.succeeded"
    assert ok["data"]["object"]["amount_received"] == 500
    assert client.v1.invoices.retrieve(inv["id"]).status == "paid"
    paid = factory.invoice_paid(factory.invoice(None, cus["id"], 700, "usd"), T0 - 2 * DAY)
    assert paid["data"]["object"]["status"] == "paid" and paid["data"]["object"]["amount_remaining"] == 0

    ids = [e.id for e in client.v1.events.list({"limit": 100}).auto_paging_iter()]
    assert len(ids) == len(set(ids)) == 10


def test_factory_ids_are_realistic_and_deterministic(sandbox: StripeSandbox) -> None:
    def build(seed: int) -> list[str]:
        f = StripeFactory(None, seed=seed)
        cus = f.customer("X", "x@example.com", created=T0)
        price = f.price(100, "usd")
        sub = f.subscription(cus["id"], [(price, 1)], created=T0)
        inv = f.invoice(sub, cus["id"], 100, "usd", status="paid", created=T0)
        return [cus["id"], price["id"], price["product"], sub["id"], sub["items"]["data"][0]["id"], inv["id"]]

    ids = build(1)
    assert ids == build(1) and ids != build(2)
    for obj_id in ids:
        assert re.fullmatch(r"(cus|price|prod|sub|si|in)_[A-Za-z0-9]{14,24}", obj_id)


@pytest.mark.skipif(not FIXTURES.exists(), reason="Stripe OpenAPI fixtures not available")
def test_objects_only_use_fields_real_stripe_has(
    sandbox: StripeSandbox, factory: StripeFactory, world: dict[str, Any], client: stripe.StripeClient
) -> None:
    resources = json.loads(FIXTURES.read_text())["resources"]
    inv_id = world["invoice"]["id"]
    link = sandbox.objects_of("invoice_payment")[0]
    pi_id = link["payment"]["payment_intent"]
    pi = client.v1.payment_intents.retrieve(pi_id)
    samples: dict[str, list[dict[str, Any]]] = {
        "customer": [world["customer"], client.v1.customers.retrieve(world["customer"]["id"]).to_dict()],
        "subscription": [
            world["sub"],
            world["old_sub"],
            client.v1.subscriptions.retrieve(world["sub"]["id"]).to_dict(),
        ],
        "subscription_item": [world["sub"]["items"]["data"][0]],
        "price": [world["price"]],
        "product": [sandbox.get(world["price"]["product"]) or {}],
        "invoice": [
            world["invoice"],
            world["failed_event"]["data"]["object"],
            client.v1.invoices.retrieve(inv_id).to_dict(),
        ],
        "line_item": [world["invoice"]["lines"]["data"][0]],
        "payment_intent": [pi.to_dict(), factory.payment_intent(world["customer"]["id"], 100, "usd")],
        "charge": [client.v1.charges.retrieve(pi.latest_charge).to_dict(), factory.charge(None, 100, "usd")],
        "invoice_payment": [link, client.v1.invoice_payments.retrieve(link["id"]).to_dict()],
        "event": [world["failed_event"], client.v1.events.retrieve(world["failed_event"]["id"]).to_dict()],
    }
    for kind, objs in samples.items():
        allowed = set(resources[kind])
        for obj in objs:
            assert obj["object"] == kind
            extra = set(obj) - allowed
            assert not extra, f"{kind} has fields Stripe's {kind} lacks: {sorted(extra)}"
    # The fixture still lists Invoice.subscription, but basil removed it: the sandbox must not emit it.
    assert "subscription" not in world["invoice"]
    assert "invoice" not in pi


def test_multi_currency_price_and_a_subscription_billed_in_another_currency(
    sandbox: StripeSandbox, factory: StripeFactory, client: stripe.StripeClient
) -> None:
    """Stripe API reference, Prices: `currency_options` only when expanded; `subscription.currency` names the billed
    currency while the items' `price` keeps the default currency and amount."""
    cus = factory.customer("Euro GmbH", "eu@example.com", created=T0 - DAY)
    price = factory.price(10000, "usd", currency_options={"eur": 9000})
    assert "currency_options" not in price
    assert "currency_options" not in client.v1.prices.retrieve(price["id"])
    expanded = client.v1.prices.retrieve(price["id"], {"expand": ["currency_options"]}).to_dict()
    options = expanded["currency_options"]
    assert options["eur"]["unit_amount"] == 9000 and options["eur"]["unit_amount_decimal"] == "9000"
    assert options["usd"]["unit_amount"] == 10000  # the default currency is one of the options
    sdk_fields = set(stripe.Price.CurrencyOptions.__annotations__)
    assert all(set(o) <= sdk_fields for o in options.values()), sdk_fields

    sub = factory.subscription(cus["id"], [(price, 2)], created=T0 - DAY, currency="eur")
    event = factory.subscription_created(sub, T0 - DAY)
    for obj in (sub, event["data"]["object"], client.v1.subscriptions.retrieve(sub["id"]).to_dict()):
        assert obj["currency"] == "eur"
        item_price = obj["items"]["data"][0]["price"]
        assert (item_price["currency"], item_price["unit_amount"]) == ("usd", 10000)
        assert "currency_options" not in item_price
    inv = factory.invoice(sub, cus["id"], 18000, "eur", created=T0 - DAY)
    assert [line["amount"] for line in inv["lines"]["data"]] == [18000]  # billed at the eur option

    with pytest.raises(ValueError, match="no currency option for gbp"):
        factory.subscription(cus["id"], [(price, 1)], currency="gbp")
    with pytest.raises(ValueError, match="no currency option for eur"):  # a plan change keeps the currency
        factory.subscription_updated(sub["id"], {"items": [(factory.price(500, "usd"), 1)]}, T0)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.retrieve(price["id"], {"expand": ["currency_options.eur"]})

    if FIXTURES.exists():
        resources = json.loads(FIXTURES.read_text())["resources"]
        for kind, obj in (("price", price), ("subscription", sub), ("price", expanded)):
            extra = set(obj) - set(resources[kind]) - ({"currency_options"} if obj is expanded else set())
            assert not extra, f"{kind} has fields Stripe's {kind} lacks: {sorted(extra)}"
