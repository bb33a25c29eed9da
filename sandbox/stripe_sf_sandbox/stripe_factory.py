"""Deterministic builders of realistic Stripe objects and events, rendered per API version.

Objects are kept in one *canonical* shape (the current API version). `render` turns a canonical object
into the shape a given `Stripe-Version` sees, and `canonicalize` turns an object written in an older
(pre-basil) shape back into the canonical one. The sandbox server uses both, so the factory and the
server agree on every shape.

Version facts honoured (Stripe changelog, 2025-03-31.basil):
- `Subscription.current_period_start/end` moved onto each subscription item.
- `Invoice.subscription`, `Invoice.payment_intent`, `Invoice.charge` were removed: the subscription now
  lives under `parent.subscription_details`, payments under the includable `payments` list of
  InvoicePayment objects.
- `PaymentIntent.invoice` and `Charge.invoice` were removed.
- Invoice line items lost `price`/`plan`/`type`/`proration`, and gained `parent` and `pricing`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import random
import re
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from stripe_sf_sandbox.stripe_server import StripeSandbox

Obj = dict[str, Any]

API_VERSION_PRE_BASIL: Final = "2024-06-20"
API_VERSION_BASIL: Final = "2025-03-31.basil"
API_VERSION_CLOVER: Final = "2025-09-30.clover"
# The version pinned by stripe-python 16.1.0 (`stripe._api_version._ApiVersion.CURRENT`).
API_VERSION_CURRENT: Final = "2026-10-28.endive"

_BASIL_DATE: Final = "2025-03-31"
_CLOVER_DATE: Final = "2025-09-30"
# The items a subscription's embedded `items` list shows; past them it says `has_more` (a first page).
EMBEDDED_LIST_LIMIT: Final = 10
_VERSION_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
_ALNUM: Final = string.ascii_letters + string.digits

# Real ids: short 14-char suffixes for customers/products/items/requests, 24 for the rest
# (e.g. cus_QXg1o8vcGmoR32, sub_1Pgc6rB7WZ01zgkWNy0Cn5nw in Stripe's own fixtures).
_ID_LENGTHS: Final[Mapping[str, int]] = {"cus": 14, "prod": 14, "si": 14, "req": 14}

# Id prefix -> `object` value, used to name missing objects ("No such customer: ...").
ID_PREFIX_OBJECTS: Final[Mapping[str, str]] = {
    "cus": "customer",
    "sub": "subscription",
    "si": "subscription_item",
    "price": "price",
    "prod": "product",
    "in": "invoice",
    "il": "line_item",
    "inpay": "invoice_payment",
    "pi": "payment_intent",
    "ch": "charge",
    "py": "charge",
    "evt": "event",
    "pm": "payment_method",
    "txn": "balance_transaction",
    "re": "refund",
    "pyr": "refund",
    "dp": "dispute",
    "du": "dispute",
    "cn": "credit_note",
    "di": "discount",
    "txr": "tax_rate",
}
# `refund.created`/`refund.updated`/`refund.failed` exist from this version on; before it a refund's update was
# `charge.refund.updated` (docs.stripe.com/changelog/acacia/2024-10-28/refund-webhook-update; api-facts "Refunds").
REFUND_EVENTS_FROM: Final = "2024-10-28"
# A dispute that is still open: it waits for evidence or a decision (stripe/_dispute.py, `status`).
OPEN_DISPUTE_STATUSES: Final = frozenset(
    {"warning_needs_response", "warning_under_review", "needs_response", "under_review"}
)

_DECLINE_MESSAGES: Final[Mapping[str, str]] = {
    "insufficient_funds": "Your card has insufficient funds.",
    "generic_decline": "Your card was declined.",
    "do_not_honor": "Your card was declined.",
    "lost_card": "Your card was declined.",
    "stolen_card": "Your card was declined.",
}
# Stripe's advice codes for the declines above (`last_payment_error.advice_code`).
_ADVICE_CODES: Final[Mapping[str, str]] = {
    "insufficient_funds": "try_again_later",
    "generic_decline": "do_not_try_again",
    "do_not_honor": "do_not_try_again",
    "lost_card": "do_not_try_again",
    "stolen_card": "do_not_try_again",
}


class _Auto:
    """Sentinel type: 'compute a realistic default'."""


AUTO: Final = _Auto()


def clone(value: Any) -> Any:
    """Deep copy of JSON-shaped data (dicts, lists, scalars); several times faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def is_valid_api_version(version: str) -> bool:
    """True for `YYYY-MM-DD` or `YYYY-MM-DD.name` (the shape of every Stripe API version) on a real calendar
    date: Stripe answers 400 "Invalid Stripe API version" to anything else."""
    if not _VERSION_RE.match(version):
        return False
    try:
        dt.date.fromisoformat(version[:10])
    except ValueError:
        return False
    return True


def is_pre_basil(version: str) -> bool:
    """True for versions older than 2025-03-31.basil (date prefixes compare lexically)."""
    return version[:10] < _BASIL_DATE


def is_pre_clover(version: str) -> bool:
    """Whether `version` predates `2025-09-30.clover`, when a Discount still carried its `coupon` expanded
    (docs.stripe.com/changelog/clover/2025-09-30/add-discount-source-property)."""
    return version[:10] < _CLOVER_DATE


def add_interval(ts: int, interval: str, count: int = 1) -> int:
    """Add `count` billing intervals to a Unix timestamp, clamping month ends like Stripe does."""
    if interval == "day":
        return ts + 86400 * count
    if interval == "week":
        return ts + 7 * 86400 * count
    d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    months = count * (12 if interval == "year" else 1)
    if interval not in ("month", "year"):
        raise ValueError(f"unknown interval {interval!r}")
    total = d.month - 1 + months
    year, month = d.year + total // 12, total % 12 + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return int(d.replace(year=year, month=month, day=day).timestamp())


def _stable_suffix(seed: str, length: int = 24) -> str:
    """A deterministic alphanumeric suffix derived from `seed` (for ids synthesised on canonicalize)."""
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    out = []
    for _ in range(length):
        digest, rem = divmod(digest, len(_ALNUM))
        out.append(_ALNUM[rem])
    return "".join(out)


@dataclass(frozen=True)
class Links:
    """Read access to other objects, needed to render cross-object fields in old versions."""

    get: Callable[[str], Obj | None]
    invoice_payments: Callable[[], Iterable[Obj]]

    def default_payment(self, invoice_id: str) -> Obj | None:
        """The invoice's default InvoicePayment (newest first, like the `payments` list)."""
        found = [p for p in self.invoice_payments() if p.get("invoice") == invoice_id]
        found.sort(key=lambda p: (bool(p.get("is_default")), p.get("created") or 0), reverse=True)
        return found[0] if found else None

    def invoice_of_payment_intent(self, pi_id: str | None) -> str | None:
        """The invoice a PaymentIntent pays, found through InvoicePayment links."""
        if not pi_id:
            return None
        for p in self.invoice_payments():
            if (p.get("payment") or {}).get("payment_intent") == pi_id:
                return str(p["invoice"])
        return None


def _plan_from_price(price: Obj) -> Obj | None:
    """The legacy `plan` view of a recurring price (Stripe still returns `plan` on subscription items)."""
    rec = price.get("recurring")
    if not rec:
        return None
    return {
        "id": price["id"],
        "object": "plan",
        "active": price.get("active", True),
        "amount": price.get("unit_amount"),
        "amount_decimal": price.get("unit_amount_decimal"),
        "billing_scheme": price.get("billing_scheme", "per_unit"),
        "created": price.get("created"),
        "currency": price.get("currency"),
        "interval": rec.get("interval"),
        "interval_count": rec.get("interval_count", 1),
        "livemode": False,
        "metadata": dict(price.get("metadata") or {}),
        "meter": rec.get("meter"),
        "nickname": price.get("nickname"),
        "product": price.get("product"),
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": rec.get("trial_period_days"),
        "usage_type": rec.get("usage_type", "licensed"),
    }


def public_price(price: Obj) -> Obj:
    """`price` as Stripe returns it by default: `currency_options` only appears when expanded
    (`expand[]=currency_options`; Stripe API reference: Prices), so stored options never leak into payloads."""
    out = clone(price)
    out.pop("currency_options", None)
    return out


def currency_option_amount(price: Obj, currency: str) -> int | None:
    """The unit amount `price` charges in `currency` (its default or one of its `currency_options`)."""
    if str(price.get("currency")) == currency:
        return price.get("unit_amount")
    option = (price.get("currency_options") or {}).get(currency)
    return option.get("unit_amount") if isinstance(option, dict) else None


# --------------------------------------------------------------------------- version rendering


def render(obj: Obj, version: str, links: Links) -> Obj:
    """Return a deep copy of canonical `obj` in the shape `version` sees."""
    out = clone(obj)
    kind = out.get("object")
    if kind == "price":
        out.pop("currency_options", None)
        out.pop("tiers", None)  # includable only (`expand[]=tiers`, pkg `_price.py`)
    elif kind == "coupon":
        out.pop("applies_to", None)  # includable only (`expand[]=applies_to`, pkg `_coupon.py`)
    elif kind == "discount" and is_pre_clover(version):
        # Before clover a Discount carries its Coupon expanded under `coupon`, and has no `source`.
        source = out.pop("source", None) or {}
        coupon = links.get(str(source.get("coupon")))
        out["coupon"] = render(coupon, version, links) if coupon is not None else source.get("coupon")
    elif kind == "subscription":
        listed = out.get("items") or {}
        data = listed.get("data") or []
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("price"), dict):
                item["price"].pop("currency_options", None)
                item["price"].pop("tiers", None)
        if isinstance(listed, dict) and len(data) > EMBEDDED_LIST_LIMIT:
            # An embedded list is its first page; the rest is read from its `url`
            # (/v1/subscription_items?subscription=…), as with an invoice's `lines`.
            listed["data"] = data[:EMBEDDED_LIST_LIMIT]
            listed["has_more"] = True
    elif kind == "subscription_item" and isinstance(out.get("price"), dict):
        out["price"].pop("currency_options", None)
        out["price"].pop("tiers", None)
    if not is_pre_basil(version):
        return out
    if kind == "subscription":
        _subscription_to_pre_basil(out, links, version)
    elif kind == "subscription_item":
        out.pop("current_period_start", None)
        out.pop("current_period_end", None)
    elif kind == "invoice":
        _invoice_to_pre_basil(out, links)
    elif kind == "payment_intent":
        out["invoice"] = links.invoice_of_payment_intent(out.get("id"))
    elif kind == "charge":
        out["invoice"] = links.invoice_of_payment_intent(out.get("payment_intent"))
    elif kind == "list" and isinstance(out.get("data"), list):
        out["data"] = [render(item, version, links) for item in out["data"]]
    return out


def _subscription_to_pre_basil(sub: Obj, links: Links, version: str) -> None:
    # Before basil a subscription carries one `discount`, its Coupon expanded (basil removed it:
    # docs.stripe.com/changelog/basil/2025-03-31/deprecate-singular-coupon-promotion-code).
    ids = sub.pop("discounts", None) or []
    first = links.get(str(ids[0])) if ids else None
    sub["discount"] = render(first, version, links) if first is not None else None
    items = (sub.get("items") or {}).get("data") or []
    first = items[0] if items else {}
    # Pre-basil: period on the subscription itself, not on the items.
    sub["current_period_start"] = first.get("current_period_start")
    sub["current_period_end"] = first.get("current_period_end")
    for item in items:
        item.pop("current_period_start", None)
        item.pop("current_period_end", None)
    sub.pop("billing_mode", None)  # introduced after basil


def _invoice_to_pre_basil(inv: Obj, links: Links) -> None:
    parent = inv.pop("parent", None) or {}
    details = parent.get("subscription_details") or None
    for newer in ("amount_overpaid", "total_pretax_credit_amounts", "total_taxes", "payments"):
        inv.pop(newer, None)
    inpay = links.default_payment(str(inv.get("id")))
    pi_id = (inpay.get("payment") or {}).get("payment_intent") if inpay else None
    pi = links.get(pi_id) if pi_id else None
    inv["subscription"] = details.get("subscription") if details else None
    inv["subscription_details"] = {"metadata": details.get("metadata") if details else None}
    inv["payment_intent"] = pi_id
    inv["charge"] = pi.get("latest_charge") if pi else None
    inv["paid"] = inv.get("status") == "paid"
    inv["paid_out_of_band"] = False
    inv["tax"] = None
    inv["total_tax_amounts"] = []
    lines = inv.get("lines")
    if isinstance(lines, dict):
        lines["data"] = [_line_to_pre_basil(line, links) for line in lines.get("data") or []]


def _line_to_pre_basil(line: Obj, links: Links) -> Obj:
    parent = line.pop("parent", None) or {}
    pricing = line.pop("pricing", None) or {}
    line.pop("pretax_credit_amounts", None)
    line.pop("taxes", None)
    line.pop("subtotal", None)
    sid = parent.get("subscription_item_details") or {}
    price_id = (pricing.get("price_details") or {}).get("price")
    price = links.get(price_id) if price_id else None
    line["type"] = "subscription" if sid else "invoiceitem"
    line["subscription_item"] = sid.get("subscription_item")
    line["proration"] = bool(sid.get("proration", False))
    line["proration_details"] = {"credited_items": None}
    line["invoice_item"] = None if sid else (parent.get("invoice_item_details") or {}).get("invoice_item")
    line["price"] = public_price(price) if price else None
    line["plan"] = _plan_from_price(price) if price else None
    line["tax_amounts"] = []
    line["tax_rates"] = []
    line["amount_excluding_tax"] = line.get("amount")
    line["unit_amount_excluding_tax"] = pricing.get("unit_amount_decimal")
    return line


def canonicalize(obj: Obj) -> tuple[Obj, list[Obj]]:
    """Turn `obj` (any supported version's shape) into the canonical shape.

    Returns the canonical copy and any InvoicePayment links implied by pre-basil fields
    (`Invoice.payment_intent`, `PaymentIntent.invoice`), which the caller should store.
    """
    out = clone(obj)
    extras: list[Obj] = []
    kind = out.get("object")
    if kind == "subscription" and "current_period_start" in out:
        start, end = out.pop("current_period_start"), out.pop("current_period_end", None)
        for item in (out.get("items") or {}).get("data") or []:
            item.setdefault("current_period_start", start)
            item.setdefault("current_period_end", end)
    elif kind == "invoice" and "parent" not in out:
        extras += _invoice_from_pre_basil(out)
    elif kind == "payment_intent" and "invoice" in out:
        inv_id = out.pop("invoice")
        if isinstance(inv_id, dict):
            inv_id = inv_id.get("id")
        if inv_id:
            paid = out.get("status") == "succeeded"
            extras.append(
                link_invoice_payment(
                    str(inv_id),
                    str(out["id"]),
                    out.get("amount", 0),
                    out.get("currency", "usd"),
                    paid=paid,
                    created=out.get("created") or 0,
                )
            )
    elif kind == "charge":
        out.pop("invoice", None)
    return out, extras


def _invoice_from_pre_basil(inv: Obj) -> list[Obj]:
    sub_id = inv.pop("subscription", None)
    if isinstance(sub_id, dict):
        sub_id = sub_id.get("id")
    details = inv.pop("subscription_details", None) or {}
    pi_id = inv.pop("payment_intent", None)
    if isinstance(pi_id, dict):
        pi_id = pi_id.get("id")
    for old in ("charge", "paid", "paid_out_of_band", "tax", "total_tax_amounts"):
        inv.pop(old, None)
    inv["parent"] = (
        {
            "quote_details": None,
            "subscription_details": {"metadata": details.get("metadata"), "subscription": sub_id},
            "type": "subscription_details",
        }
        if sub_id
        else None
    )
    inv.setdefault("amount_overpaid", 0)
    inv.setdefault("total_pretax_credit_amounts", [])
    inv.setdefault("total_taxes", [])
    lines = inv.get("lines")
    if isinstance(lines, dict):
        lines["data"] = [_line_from_pre_basil(line) for line in lines.get("data") or []]
    if not pi_id:
        return []
    return [
        link_invoice_payment(
            str(inv["id"]),
            str(pi_id),
            inv.get("amount_due", 0),
            inv.get("currency", "usd"),
            paid=inv.get("status") == "paid",
            created=inv.get("created") or 0,
        )
    ]


def _line_from_pre_basil(line: Obj) -> Obj:
    if "parent" in line:
        return line
    price = line.pop("price", None)
    line.pop("plan", None)
    kind = line.pop("type", "subscription")
    si = line.pop("subscription_item", None)
    proration = line.pop("proration", False)
    line.pop("proration_details", None)
    invoice_item = line.pop("invoice_item", None)
    unit_decimal = line.pop("unit_amount_excluding_tax", None)
    for old in ("tax_amounts", "tax_rates", "amount_excluding_tax"):
        line.pop(old, None)
    price_id = price.get("id") if isinstance(price, dict) else price
    product = price.get("product") if isinstance(price, dict) else None
    line["parent"] = (
        {
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": line.get("subscription"),
                "subscription_item": si,
            },
            "type": "subscription_item_details",
        }
        if kind == "subscription"
        else {
            "invoice_item_details": {
                "invoice_item": invoice_item,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": line.get("subscription"),
            },
            "subscription_item_details": None,
            "type": "invoice_item_details",
        }
    )
    line["pricing"] = {
        "price_details": {"price": price_id, "product": product},
        "type": "price_details",
        "unit_amount_decimal": unit_decimal,
    }
    line.setdefault("pretax_credit_amounts", [])
    line.setdefault("taxes", [])
    line.setdefault("subtotal", line.get("amount"))
    return line


def link_invoice_payment(
    invoice_id: str,
    pi_id: str,
    amount: int,
    currency: str,
    *,
    paid: bool,
    created: int,
    inpay_id: str | None = None,
) -> Obj:
    """An InvoicePayment tying a PaymentIntent to an invoice (Stripe's basil+ link between them)."""
    return {
        "id": inpay_id or "inpay_" + _stable_suffix(f"{invoice_id}/{pi_id}"),
        "object": "invoice_payment",
        # `amount_paid` is null until the payment is paid (InvoicePayment docs).
        "amount_paid": amount if paid else None,
        "amount_requested": amount,
        "created": created,
        "currency": currency,
        "invoice": invoice_id,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": pi_id},
        "status": "paid" if paid else "open",
        "status_transitions": {"canceled_at": None, "paid_at": created if paid else None},
    }


def diff_attributes(old: Any, new: Any) -> Any:
    """Stripe-style `previous_attributes`: old values of what changed; arrays included whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        prev: Obj = {}
        for key in set(old) | set(new):
            if key not in new:
                prev[key] = clone(old[key])
            elif key not in old:
                prev[key] = None
            elif old[key] != new[key]:
                both_dicts = isinstance(old[key], dict) and isinstance(new[key], dict)
                prev[key] = diff_attributes(old[key], new[key]) if both_dicts else clone(old[key])
        return prev
    return clone(old)


def _deep_merge(base: Obj, changes: Mapping[str, Any]) -> Obj:
    out = clone(base)
    for key, value in changes.items():
        is_list_object = isinstance(value, dict) and value.get("object") == "list"
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not is_list_object:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = clone(value)
    return out


# --------------------------------------------------------------------------- the factory


class StripeFactory:
    """Builds realistic Stripe objects with unique, seed-deterministic ids.

    With a sandbox, built objects are stored in it (unless `autostore=False`), and the emitters both
    store the new state and append the matching event. Builders return the object rendered in
    `api_version` (default: the factory's).
    """

    def __init__(
        self,
        sandbox: StripeSandbox | None = None,
        seed: int = 0,
        *,
        api_version: str = API_VERSION_CURRENT,
        autostore: bool = True,
        account_id: str = "acct_1SbxStripeSfSync0",
    ) -> None:
        if not is_valid_api_version(api_version):
            raise ValueError(f"invalid Stripe API version {api_version!r}")
        self.sandbox = sandbox
        self.api_version = api_version
        self.autostore = autostore
        # An added account's objects (hosted invoice URLs) name that account.
        self.account_id = sandbox.account_id if sandbox is not None and sandbox.id_salt else account_id
        # An added account (StripeSandbox.add_account) salts the seed: two accounts never share an id.
        salt = sandbox.id_salt if sandbox is not None else ""
        self._rng = random.Random(f"{seed}{salt}" if salt else seed)
        self._issued: set[str] = set()
        self._registry: dict[str, Obj] = {}
        self._invoice_numbers: dict[str, int] = {}
        self._links = Links(get=self._lookup, invoice_payments=self._invoice_payments)

    # ----------------------------------------------------------------- plumbing

    def new_id(self, prefix: str) -> str:
        """A fresh id such as `cus_QXg1o8vcGmoR32`, unique within this factory."""
        while True:
            suffix = "".join(self._rng.choice(_ALNUM) for _ in range(_ID_LENGTHS.get(prefix, 24)))
            candidate = f"{prefix}_{suffix}"
            if candidate not in self._issued:
                self._issued.add(candidate)
                return candidate

    def _now(self) -> int:
        return int(self.sandbox.now()) if self.sandbox is not None else int(time.time())

    def _lookup(self, obj_id: str) -> Obj | None:
        if self.sandbox is not None:
            found = self.sandbox.get(obj_id)
            if found is not None:
                return found
        return self._registry.get(obj_id)

    def _invoice_payments(self) -> list[Obj]:
        seen: dict[str, Obj] = {
            o["id"]: o for o in self._registry.values() if o["object"] == "invoice_payment"
        }
        if self.sandbox is not None:
            seen.update({o["id"]: o for o in self.sandbox.links.invoice_payments()})
        return list(seen.values())

    def _save(self, canonical: Obj) -> None:
        if self.sandbox is not None and self.autostore:
            self.sandbox.put(canonical)  # the sandbox holds the state; no second copy here
        else:
            self._registry[canonical["id"]] = clone(canonical)

    def _out(self, canonical: Obj, api_version: str | None) -> Obj:
        return render(canonical, api_version or self.api_version, self._links)

    def _current(self, obj: Obj | str) -> Obj:
        """Latest canonical state of `obj` (stored state wins over the caller's possibly stale copy)."""
        obj_id = obj if isinstance(obj, str) else str(obj["id"])
        found = self._lookup(obj_id)
        if found is not None:
            return clone(found)
        if isinstance(obj, str):
            raise KeyError(f"unknown object {obj_id!r}")
        canonical, _ = canonicalize(obj)
        return canonical

    def _require_sandbox(self) -> StripeSandbox:
        if self.sandbox is None:
            raise RuntimeError("this StripeFactory has no sandbox to emit events into")
        return self.sandbox

    def emit(
        self,
        type: str,
        obj: Obj,
        at: int,
        *,
        previous_attributes: Obj | None = None,
        automatic: bool = False,
    ) -> Obj:
        """Store `obj` and emit a `type` event in the factory's API version.

        `automatic=True` marks events Stripe raises on its own (renewals, retries): `request.id` is null.
        """
        sandbox = self._require_sandbox()
        request: Obj = {"id": None, "idempotency_key": None}
        if not automatic:
            request = {"id": self.new_id("req"), "idempotency_key": self._idempotency_key()}
        return sandbox.emit(
            type,
            obj,
            created=at,
            previous_attributes=previous_attributes,
            api_version=self.api_version,
            event_id=self.new_id("evt"),
            request=request,
        )

    def _idempotency_key(self) -> str:
        h = "".join(self._rng.choice("0123456789abcdef") for _ in range(32))
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"

    # ----------------------------------------------------------------- builders

    def customer(
        self,
        name: str,
        email: str,
        metadata: Mapping[str, str] | None = None,
        created: int | None = None,
        *,
        currency: str | None = None,
        phone: str | None = None,
        api_version: str | None = None,
    ) -> Obj:
        """A Customer (`cus_`)."""
        cus_id = self.new_id("cus")
        prefix = "".join(self._rng.choice(string.ascii_uppercase + string.digits) for _ in range(8))
        obj: Obj = {
            "id": cus_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._now() if created is None else created,
            "currency": currency,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": email,
            "invoice_prefix": prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": dict(metadata or {}),
            "name": name,
            "next_invoice_sequence": 1,
            "phone": phone,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._save(obj)
        return self._out(obj, api_version)

    def customer_deleted(self, cus: Obj | str, at: int) -> Obj:
        """Delete a customer: emit `customer.deleted` (its last state), then keep only the stub Stripe answers
        for it ({id, object, deleted: true}), which no list shows (Stripe API reference: Delete a customer)."""
        old = self._current(cus)
        event = self.emit("customer.deleted", old, at)
        self._save({"id": old["id"], "object": "customer", "deleted": True})
        return event

    def product(
        self, name: str, created: int | None = None, *, metadata: Mapping[str, str] | None = None
    ) -> Obj:
        """A Product (`prod_`)."""
        ts = self._now() if created is None else created
        obj: Obj = {
            "id": self.new_id("prod"),
            "object": "product",
            "active": True,
            "created": ts,
            "default_price": None,
            "description": None,
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": dict(metadata or {}),
            "name": name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": ts,
            "url": None,
        }
        self._save(obj)
        return clone(obj)

    def price(
        self,
        unit_amount: int,
        currency: str = "usd",
        interval: str | None = "month",
        interval_count: int = 1,
        *,
        product: Obj | str | None = None,
        product_name: str = "Pro plan",
        nickname: str | None = None,
        lookup_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        created: int | None = None,
        currency_options: Mapping[str, int] | None = None,
        tiers: Sequence[Mapping[str, int | None]] | None = None,
        tiers_mode: str = "graduated",
        transform_quantity: Mapping[str, Any] | None = None,
        tax_behavior: str = "unspecified",
        usage_type: str = "licensed",
    ) -> Obj:
        """A Price (`price_`); recurring unless `interval` is None. Creates its Product if not given.

        `tiers` ([{"up_to": 10, "unit_amount": 1000, "flat_amount": 0}, {"up_to": None, ...}]) makes it tiered
        (`tiers_mode` graduated or volume): like Stripe, `tiers` appear only with `expand[]=tiers`.
        `transform_quantity` ({"divide_by": 10, "round": "up"}) is package pricing; `usage_type` metered
        bills usage in arrears (pkg `_price.py`).

        `currency_options` ({"eur": 9000}) makes it a multi-currency Price: a subscription may then be
        billed in those currencies too. Like Stripe, the options are stored but only returned when
        expanded (`expand[]=currency_options`); the Price returned here is the default view.
        """
        ts = self._now() if created is None else created
        if product is None:
            product = self.product(product_name, created=ts)
        product_id = product if isinstance(product, str) else str(product["id"])
        obj: Obj = {
            "id": self.new_id("price"),
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": ts,
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": dict(metadata or {}),
            "nickname": nickname,
            "product": product_id,
            "recurring": (
                {
                    "interval": interval,
                    "interval_count": interval_count,
                    "meter": None,
                    "trial_period_days": None,
                    "usage_type": usage_type,
                }
                if interval
                else None
            ),
            "tax_behavior": tax_behavior,
            "tiers_mode": tiers_mode if tiers else None,
            "transform_quantity": dict(transform_quantity) if transform_quantity else None,
            "type": "recurring" if interval else "one_time",
            "unit_amount": unit_amount,
            # Stripe renders the decimal form as a string ("2000" in the fixtures).
            "unit_amount_decimal": str(unit_amount),
        }
        if tiers:
            obj.update(billing_scheme="tiered", unit_amount=None, unit_amount_decimal=None, tiers=[
                {"flat_amount": t.get("flat_amount"), "flat_amount_decimal": None if t.get("flat_amount") is None
                 else str(t["flat_amount"]), "unit_amount": t.get("unit_amount"), "unit_amount_decimal":
                 None if t.get("unit_amount") is None else str(t["unit_amount"]), "up_to": t.get("up_to")}
                for t in tiers])
        if currency_options:
            # Expanded, Stripe lists every currency of the Price, its default one included; each option
            # has the fields of the SDK's `Price.CurrencyOptions` (`tiers` only on tiered prices).
            amounts = {currency: unit_amount, **{c.lower(): a for c, a in currency_options.items()}}
            obj["currency_options"] = {
                cur: {
                    "custom_unit_amount": None,
                    "tax_behavior": "unspecified",
                    "unit_amount": amount,
                    "unit_amount_decimal": str(amount),
                }
                for cur, amount in amounts.items()
            }
        self._save(obj)
        return public_price(obj)

    def _subscription_item(
        self, sub_id: str, price: Obj, quantity: int, created: int, start: int, end: int
    ) -> Obj:
        return {
            "id": self.new_id("si"),
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": created,
            "current_period_end": end,
            "current_period_start": start,
            "discounts": [],
            "metadata": {},
            "plan": _plan_from_price(price),
            "price": public_price(price),
            "quantity": quantity,
            "subscription": sub_id,
            "tax_rates": [],
        }

    def _items_list(self, sub_id: str, items: list[Obj]) -> Obj:
        return {
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={sub_id}",
        }

    def subscription(
        self,
        customer_id: str,
        items: Sequence[tuple[Obj, int]],
        status: str = "active",
        created: int | None = None,
        metadata: Mapping[str, str] | None = None,
        cancel_at_period_end: bool = False,
        trial_end: int | None = None,
        api_version: str | None = None,
        *,
        collection_method: str = "charge_automatically",
        current_period_start: int | None = None,
        latest_invoice: str | None = None,
        cancel_at: int | None = None,
        canceled_at: int | None = None,
        ended_at: int | None = None,
        cancellation_reason: str | None = None,
        days_until_due: int | None = None,
        currency: str | None = None,
        default_tax_rates: Sequence[Obj] = (),
    ) -> Obj:
        """A Subscription (`sub_`) with one item (`si_`) per `(price, quantity)`.

        `default_tax_rates`: TaxRate objects (`tax_rate`), embedded whole as Stripe does.

        `currency` bills it in one of its prices' `currency_options` (default: the first price's
        currency). As in Stripe, `subscription.currency` then says so, while each item's `price` still
        shows the Price's default `currency` and `unit_amount` (`stripe/_price.py`).
        """
        if not items:
            raise ValueError("a subscription needs at least one item")
        ts = self._now() if created is None else created
        first_price = items[0][0]
        billed = (currency or first_price.get("currency") or "usd").lower()
        for price, _ in items:
            stored = self._lookup(str(price["id"])) or price
            if stored.get("currency") != billed and currency_option_amount(stored, billed) is None:
                # Stripe refuses such a subscription at creation.
                raise ValueError(f"price {price['id']} has no currency option for {billed}")
        sub_id = self.new_id("sub")
        recurring = first_price.get("recurring") or {"interval": "month", "interval_count": 1}
        if status == "trialing" and trial_end is None:
            trial_end = ts + 14 * 86400  # a trialing subscription always has a trial end
        if trial_end is not None:
            start, end = ts, trial_end  # the trial is the first period
        else:
            start = ts if current_period_start is None else current_period_start
            end = add_interval(start, recurring["interval"], recurring.get("interval_count", 1))
        if cancel_at_period_end and cancel_at is None:
            cancel_at = end  # Stripe sets cancel_at to the period end when cancel_at_period_end is true
        if status in ("canceled", "incomplete_expired"):
            canceled_at = ts if canceled_at is None else canceled_at
            ended_at = canceled_at if ended_at is None else ended_at
            cancellation_reason = cancellation_reason or "cancellation_requested"
        elif cancel_at is not None and canceled_at is None:
            canceled_at = ts  # a scheduled cancellation records when it was requested
            cancellation_reason = cancellation_reason or "cancellation_requested"
        obj: Obj = {
            "id": sub_id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": end if trial_end is not None else start,
            "billing_cycle_anchor_config": None,
            "billing_mode": {"flexible": None, "type": "classic"},
            "billing_thresholds": None,
            "cancel_at": cancel_at,
            "cancel_at_period_end": cancel_at_period_end,
            "canceled_at": canceled_at,
            "cancellation_details": {"comment": None, "feedback": None, "reason": cancellation_reason},
            "collection_method": collection_method,
            "created": ts,
            "currency": billed,
            "customer": customer_id,
            "customer_account": None,
            "days_until_due": days_until_due if collection_method == "send_invoice" else None,
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [clone(r) for r in default_tax_rates],
            "description": None,
            "discounts": [],
            "ended_at": ended_at,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": self._items_list(
                sub_id, [self._subscription_item(sub_id, p, q, ts, start, end) for p, q in items]
            ),
            "latest_invoice": latest_invoice,
            "livemode": False,
            "metadata": dict(metadata or {}),
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": ts,
            "status": status,
            "test_clock": None,
            "transfer_data": None,
            "trial_end": trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": ts if trial_end is not None else None,
        }
        self._save(obj)
        return self._out(obj, api_version)

    def coupon(self, *, percent_off: float | None = None, amount_off: int | None = None, currency: str | None = None,
               duration: str = "forever", duration_in_months: int | None = None, coupon_id: str | None = None,
               applies_to: Sequence[str] | None = None, name: str | None = None, created: int | None = None) -> Obj:
        """A Coupon: `percent_off`, or `amount_off` in `currency`; `duration` once, repeating
        (`duration_in_months`) or forever; `applies_to` product ids (includable: `expand[]=applies_to`)."""
        if (percent_off is None) == (amount_off is None):
            raise ValueError("a coupon has percent_off or amount_off, not both")
        obj: Obj = {
            "id": coupon_id or "".join(self._rng.choice(string.ascii_uppercase + string.digits) for _ in range(8)),
            "object": "coupon", "amount_off": amount_off, "created": self._now() if created is None else created,
            "currency": currency if amount_off is not None else None, "duration": duration,
            "duration_in_months": duration_in_months if duration == "repeating" else None, "livemode": False,
            "max_redemptions": None, "metadata": {}, "name": name, "percent_off": percent_off,
            "redeem_by": None, "times_redeemed": 0, "valid": True,
            "applies_to": {"products": list(applies_to)} if applies_to is not None else None,
        }
        self._save(obj)
        return clone(obj)

    def tax_rate(self, percentage: float, *, inclusive: bool) -> Obj:
        """A TaxRate (`txr_`), inclusive (inside the price) or exclusive (added on top)."""
        obj: Obj = {"id": self.new_id("txr"), "object": "tax_rate", "active": True, "country": None,
                    "created": self._now(), "description": None, "display_name": "VAT", "inclusive": inclusive,
                    "jurisdiction": None, "livemode": False, "metadata": {}, "percentage": percentage,
                    "rate_type": "percentage", "state": None, "tax_type": "vat"}
        self._save(obj)
        return clone(obj)

    def _discount(self, coupon: Obj, sub: Obj, at: int, item_id: str | None) -> Obj:
        """A Discount (`di_`), canonical in the clover shape: its coupon named under `source`."""
        end = None
        if coupon["duration"] == "repeating":
            end = add_interval(at, "month", int(coupon["duration_in_months"] or 1))
        obj: Obj = {"id": self.new_id("di"), "object": "discount", "checkout_session": None,
                    "customer": sub["customer"], "end": end, "invoice": None, "invoice_item": None,
                    "promotion_code": None, "source": {"coupon": coupon["id"], "type": "coupon"}, "start": at,
                    "subscription": sub["id"], "subscription_item": item_id}
        self._save(obj)
        return obj

    def add_discount(self, sub: Obj | str, coupon: Obj, at: int, *, item: int | None = None,
                     emit: bool = True) -> Obj:
        """Apply `coupon` to the subscription (or to its `item`-th item) and emit
        `customer.subscription.updated`: `discounts` (ids) in `previous_attributes`, a value change.
        `emit=False`: only store it (a coupon given at creation, before `subscription_created`); returns the
        Discount then."""
        old = self._current(sub)
        item_id = old["items"]["data"][item]["id"] if item is not None else None
        discount = self._discount(coupon, old, at, item_id)
        changes: Obj
        if item is None:
            changes = {"discounts": [*old["discounts"], discount["id"]]}
        else:
            items = clone(old["items"])
            items["data"][item]["discounts"] = [*items["data"][item]["discounts"], discount["id"]]
            changes = {"items": items}
        if not emit:
            self._save(_deep_merge(old, changes))
            return clone(discount)
        return self.subscription_updated(old["id"], changes, at)

    def remove_discount(self, sub: Obj | str, discount_id: str, at: int) -> Obj:
        """Remove a discount (a coupon removed, or a repeating one ended) from the subscription or its items."""
        old = self._current(sub)
        items = clone(old["items"])
        for it in items["data"]:
            it["discounts"] = [d for d in it["discounts"] if d != discount_id]
        return self.subscription_updated(old["id"], {
            "discounts": [d for d in old["discounts"] if d != discount_id], "items": items}, at)

    def charge(
        self,
        customer_id: str | None,
        amount: int,
        currency: str = "usd",
        *,
        payment_intent: str | None = None,
        status: str = "succeeded",
        failure_code: str | None = None,
        failure_message: str | None = None,
        decline_code: str | None = None,
        outcome: Obj | None = None,
        created: int | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        api_version: str | None = None,
    ) -> Obj:
        """A card Charge (`ch_`); `status="failed"` gives a declined charge with `failure_code`."""
        ts = self._now() if created is None else created
        ch_id = self.new_id("ch")
        failed = status == "failed"
        if failed:
            decline_code = decline_code or "generic_decline"
            failure_code = failure_code or "card_declined"
            failure_message = failure_message or _DECLINE_MESSAGES.get(
                decline_code, "Your card was declined."
            )
        if outcome is None:
            outcome = (
                {
                    "advice_code": _ADVICE_CODES.get(str(decline_code)),
                    "network_advice_code": None,
                    "network_decline_code": "51" if decline_code == "insufficient_funds" else "05",
                    "network_status": "declined_by_network",
                    "reason": decline_code,
                    "risk_level": "normal",
                    "risk_score": 20,
                    "seller_message": f"The bank returned the decline code `{decline_code}`.",
                    "type": "issuer_declined",
                }
                if failed
                else {
                    "advice_code": None,
                    "network_advice_code": None,
                    "network_decline_code": None,
                    "network_status": "approved_by_network",
                    "reason": None,
                    "risk_level": "normal",
                    "risk_score": 20,
                    "seller_message": "Payment complete.",
                    "type": "authorized",
                }
            )
        receipt = _stable_suffix(ch_id, 60)
        obj: Obj = {
            "id": ch_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": 0 if failed else amount,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": None if failed else self.new_id("txn"),
            "billing_details": {
                "address": {
                    "city": None,
                    "country": None,
                    "line1": None,
                    "line2": None,
                    "postal_code": "42424",
                    "state": None,
                },
                "email": None,
                "name": None,
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": "STRIPE-SF SANDBOX",
            "captured": not failed,
            "created": ts,
            "currency": currency,
            "customer": customer_id,
            "description": description,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": failure_code,
            "failure_message": failure_message,
            "fraud_details": {},
            "livemode": False,
            "metadata": dict(metadata or {}),
            "on_behalf_of": None,
            "outcome": outcome,
            "paid": not failed,
            "payment_intent": payment_intent,
            "payment_method": self.new_id("pm"),
            "payment_method_details": {
                "card": {
                    "amount_authorized": None if failed else amount,
                    "authorization_code": None,
                    "brand": "visa",
                    "checks": {
                        "address_line1_check": None,
                        "address_postal_code_check": "pass",
                        "cvc_check": "pass",
                    },
                    "country": "US",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "fingerprint": _stable_suffix(customer_id or ch_id, 16),
                    "funding": "credit",
                    "installments": None,
                    "last4": "9995" if decline_code == "insufficient_funds" else "4242",
                    "mandate": None,
                    "network": "visa",
                    "network_token": {"used": False},
                    "network_transaction_id": None
                    if failed
                    else "".join(self._rng.choice(string.digits) for _ in range(15)),
                    "regulated_status": "unregulated",
                    "three_d_secure": None,
                    "wallet": None,
                },
                "type": "card",
            },
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{receipt}",
            "refunded": False,
            "review": None,
            "shipping": None,
            "source": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": status,
            "transfer_data": None,
            "transfer_group": None,
        }
        self._save(obj)
        return self._out(obj, api_version)

    def payment_intent(
        self,
        customer_id: str | None,
        amount: int,
        currency: str = "usd",
        status: str = "succeeded",
        metadata: Mapping[str, str] | None = None,
        last_payment_error: Obj | None = None,
        invoice: str | None = None,
        api_version: str | None = None,
        *,
        created: int | None = None,
        description: str | None = None,
        decline_code: str | None = None,
    ) -> Obj:
        """A PaymentIntent (`pi_`) with its latest Charge.

        `status="succeeded"` gets a paid charge; a `last_payment_error` (or `decline_code`) gets a failed
        one. `invoice` links the intent to an invoice through an InvoicePayment: pre-basil versions render
        it as `PaymentIntent.invoice`, basil+ only through `/v1/invoice_payments`.
        """
        ts = self._now() if created is None else created
        pi_id = self.new_id("pi")
        if decline_code and last_payment_error is None:
            last_payment_error = {}
        latest_charge: str | None = None
        if last_payment_error is not None:
            decline_code = decline_code or last_payment_error.get("decline_code") or "generic_decline"
            ch = self.charge(
                customer_id,
                amount,
                currency,
                payment_intent=pi_id,
                status="failed",
                decline_code=decline_code,
                created=ts,
                description=description,
                failure_message=last_payment_error.get("message"),
            )
            latest_charge = ch["id"]
            last_payment_error = {
                "advice_code": _ADVICE_CODES.get(decline_code),
                "charge": latest_charge,
                "code": "card_declined",
                "decline_code": decline_code,
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                "message": _DECLINE_MESSAGES.get(decline_code, "Your card was declined."),
                "type": "card_error",
                **last_payment_error,
            }
            if status == "succeeded":
                status = (
                    "requires_payment_method"  # a declined attempt leaves the intent needing a new method
                )
        elif status == "succeeded":
            ch = self.charge(
                customer_id, amount, currency, payment_intent=pi_id, created=ts, description=description
            )
            latest_charge = ch["id"]
        obj: Obj = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": amount if status == "succeeded" else 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": f"{pi_id}_secret_{_stable_suffix(pi_id, 25)}",
            "confirmation_method": "automatic",
            "created": ts,
            "currency": currency,
            "customer": customer_id,
            "customer_account": None,
            "description": description,
            "excluded_payment_method_types": None,
            "last_payment_error": last_payment_error,
            "latest_charge": latest_charge,
            "livemode": False,
            "metadata": dict(metadata or {}),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": None if status == "requires_payment_method" else self.new_id("pm"),
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": "off_session",
            "shipping": None,
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": status,
            "transfer_data": None,
            "transfer_group": None,
        }
        self._save(obj)
        if invoice:
            self._save(
                link_invoice_payment(
                    invoice,
                    pi_id,
                    amount,
                    currency,
                    paid=status == "succeeded",
                    created=ts,
                    inpay_id=self.new_id("inpay"),
                )
            )
        return self._out(obj, api_version)

    def invoice(
        self,
        subscription: Obj | str | None,
        customer_id: str,
        amount_due: int,
        currency: str = "usd",
        status: str = "open",
        attempt_count: int = 1,
        next_payment_attempt: int | _Auto | None = AUTO,
        billing_reason: str = "subscription_cycle",
        api_version: str | None = None,
        payment_intent: Obj | str | None = None,
        *,
        created: int | None = None,
        metadata: Mapping[str, str] | None = None,
        collection_method: str = "charge_automatically",
        period_start: int | None = None,
        period_end: int | None = None,
    ) -> Obj:
        """An Invoice (`in_`), its line items, and (when paid or given a PaymentIntent) its InvoicePayment.

        A `paid` charge-automatically invoice without `payment_intent` gets a succeeded one. With a
        subscription dict, `latest_invoice` is updated on it (in place) and in the store.
        """
        ts = self._now() if created is None else created
        inv_id = self.new_id("in")
        sub: Obj | None = None
        if isinstance(subscription, str):
            sub = self._lookup(subscription)
        elif subscription is not None:
            sub = self._current(subscription)
        sub_id = (sub or {}).get("id") or (subscription if isinstance(subscription, str) else None)
        if status == "draft":
            attempt_count = 0
        paid = status == "paid"
        pi_id: str | None
        if isinstance(payment_intent, dict):
            pi_id = str(payment_intent["id"])
        else:
            pi_id = payment_intent
        if pi_id is None and paid and collection_method == "charge_automatically" and amount_due > 0:
            pi_id = self.payment_intent(
                customer_id,
                amount_due,
                currency,
                created=ts,
                description="Subscription update" if sub_id else None,
            )["id"]
        if isinstance(next_payment_attempt, _Auto):
            # Smart Retries schedule the next attempt a few days out while the invoice stays open.
            retrying = status == "open" and collection_method == "charge_automatically" and attempt_count < 4
            next_payment_attempt = ts + 3 * 86400 if retrying else None
        customer = self._lookup(customer_id) or {}
        prefix = str(customer.get("invoice_prefix") or "SBX0" + customer_id[-4:].upper())
        number: str | None = None
        if status != "draft":
            self._invoice_numbers[prefix] = self._invoice_numbers.get(prefix, 0) + 1
            number = f"{prefix}-{self._invoice_numbers[prefix]:04d}"
        sub_items = ((sub or {}).get("items") or {}).get("data") or []
        p_start = (
            period_start
            if period_start is not None
            else (sub_items[0].get("current_period_start", ts) if sub_items else ts)
        )
        p_end = (
            period_end
            if period_end is not None
            else (sub_items[0].get("current_period_end", ts) if sub_items else ts)
        )
        lines = self._invoice_lines(inv_id, sub_id, sub_items, amount_due, currency, p_start, p_end)
        secret = "test_" + _stable_suffix(inv_id, 40)
        obj: Obj = {
            "id": inv_id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "stripe-sf sandbox",
            "account_tax_ids": None,
            "amount_due": amount_due,
            "amount_overpaid": 0,
            "amount_paid": amount_due if paid else 0,
            "amount_remaining": 0 if paid or status == "void" else amount_due,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": attempt_count,
            "attempted": attempt_count > 0,
            "auto_advance": status in ("draft", "open"),
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": ts + 3600 if status == "draft" else None,
            "billing_reason": billing_reason,
            "collection_method": collection_method,
            "created": ts,
            "currency": currency,
            "custom_fields": None,
            "customer": customer_id,
            "customer_account": None,
            "customer_address": None,
            "customer_email": customer.get("email"),
            "customer_name": customer.get("name"),
            "customer_phone": customer.get("phone"),
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [],
            "due_date": ts + 30 * 86400 if collection_method == "send_invoice" else None,
            "effective_at": None if status == "draft" else ts,
            "ending_balance": None if status == "draft" else 0,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": (
                None if status == "draft" else f"https://invoice.stripe.com/i/{self.account_id}/{secret}?s=ap"
            ),
            "invoice_pdf": (
                None
                if status == "draft"
                else f"https://pay.stripe.com/invoice/{self.account_id}/{secret}/pdf?s=ap"
            ),
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": lines,
            "livemode": False,
            "metadata": dict(metadata or {}),
            "next_payment_attempt": next_payment_attempt,
            "number": number,
            "on_behalf_of": None,
            "parent": (
                {
                    "quote_details": None,
                    # Basil+: the subscription (and its metadata at finalization) live here.
                    "subscription_details": {
                        "metadata": dict((sub or {}).get("metadata") or {}),
                        "subscription": sub_id,
                    },
                    "type": "subscription_details",
                }
                if sub_id
                else None
            ),
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "period_end": p_end,
            "period_start": p_start,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": status,
            "status_transitions": {
                "finalized_at": None if status == "draft" else ts,
                "marked_uncollectible_at": ts if status == "uncollectible" else None,
                "paid_at": ts if paid else None,
                "voided_at": ts if status == "void" else None,
            },
            "subtotal": amount_due,
            "subtotal_excluding_tax": amount_due,
            "test_clock": None,
            "total": amount_due,
            "total_discount_amounts": [],
            "total_excluding_tax": amount_due,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": None if status == "draft" else ts,
        }
        self._save(obj)
        if pi_id is not None:
            self._save(
                link_invoice_payment(
                    inv_id, pi_id, amount_due, currency, paid=paid, created=ts, inpay_id=self.new_id("inpay")
                )
            )
        if sub is not None:
            sub["latest_invoice"] = inv_id
            self._save(sub)
            if isinstance(subscription, dict):
                subscription["latest_invoice"] = inv_id
        return self._out(obj, api_version)

    def _invoice_lines(
        self,
        inv_id: str,
        sub_id: str | None,
        sub_items: list[Obj],
        amount_due: int,
        currency: str,
        start: int,
        end: int,
    ) -> Obj:
        specs: list[tuple[Obj | None, Obj | None, int, int]] = []
        item: Obj | None  # a subscription item below; None in the single line of a fallback spec
        for item in sub_items:
            price = item.get("price") or {}
            # A subscription billed in another of the price's currencies is invoiced at that option's amount.
            stored = self._lookup(str(price.get("id"))) or price
            unit = currency_option_amount(stored, currency)
            specs.append((item, price, int(item.get("quantity") or 1), int(unit or 0)))
        if not specs or sum(q * u for _, _, q, u in specs) != amount_due:
            specs = [
                (
                    sub_items[0] if sub_items else None,
                    (sub_items[0].get("price") if sub_items else None),
                    1,
                    amount_due,
                )
            ]
        data: list[Obj] = []
        for item, price, quantity, unit in specs:
            amount = quantity * unit
            product = self._lookup(str((price or {}).get("product"))) if price else None
            label = str((product or {}).get("name") or "Subscription")
            data.append(
                {
                    "id": self.new_id("il"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": currency,
                    "description": f"{quantity} × {label}" if item else label,
                    "discount_amounts": [],
                    "discountable": True,
                    "discounts": [],
                    "invoice": inv_id,
                    "livemode": False,
                    "metadata": {},
                    "parent": (
                        {
                            "invoice_item_details": None,
                            "subscription_item_details": {
                                "invoice_item": None,
                                "proration": False,
                                "proration_details": {"credited_items": None},
                                "subscription": sub_id,
                                "subscription_item": item.get("id"),
                            },
                            "type": "subscription_item_details",
                        }
                        if item
                        else {
                            "invoice_item_details": {
                                "invoice_item": self.new_id("ii"),
                                "proration": False,
                                "proration_details": {"credited_items": None},
                                "subscription": sub_id,
                            },
                            "subscription_item_details": None,
                            "type": "invoice_item_details",
                        }
                    ),
                    "period": {"end": end, "start": start},
                    "pretax_credit_amounts": [],
                    "pricing": {
                        "price_details": {
                            "price": (price or {}).get("id"),
                            "product": (price or {}).get("product"),
                        },
                        "type": "price_details",
                        "unit_amount_decimal": str(unit),
                    },
                    "quantity": quantity,
                    "subscription": sub_id,
                    "subtotal": amount,
                    "taxes": [],
                }
            )
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "total_count": len(data),
            "url": f"/v1/invoices/{inv_id}/lines",
        }

    # ----------------------------------------------------------------- emitters

    def subscription_created(self, sub: Obj, at: int) -> Obj:
        """Store `sub` and emit `customer.subscription.created`."""
        return self.emit("customer.subscription.created", self._current(sub), at)

    def subscription_updated(self, sub: Obj | str, changes: Mapping[str, Any], at: int) -> Obj:
        """Apply `changes` to the stored subscription and emit `customer.subscription.updated`.

        `previous_attributes` is computed against the old stored state, rendered in the event's version
        (nested hashes partially, arrays whole). `changes["items"]` may be `[(price, quantity), ...]`;
        the items' period is kept. Turning `cancel_at_period_end` on sets `cancel_at` to the period end and
        `canceled_at` to `at`, as Stripe does; turning it off clears them.
        """
        old = self._current(sub)
        changes = dict(changes)
        if "cancel_at_period_end" in changes and "cancel_at" not in changes:
            scheduled = bool(changes["cancel_at_period_end"])
            period_end = (old["items"]["data"] or [{}])[0].get("current_period_end")
            changes["cancel_at"] = period_end if scheduled else None
            changes.setdefault("canceled_at", at if scheduled else None)
            changes.setdefault(
                "cancellation_details", {"reason": "cancellation_requested" if scheduled else None}
            )
        if isinstance(changes.get("items"), (list, tuple)):
            changes["items"] = self._replace_items(old, changes["items"], at)
        for key in ("current_period_start", "current_period_end"):
            if key in changes:  # pre-basil key: basil+ keeps the period on each item
                value = changes.pop(key)
                items = clone(changes.get("items") or old["items"])
                for item in items["data"]:
                    item[key] = value
                changes["items"] = items
        new = _deep_merge(old, changes)
        prev = diff_attributes(self._out(old, None), self._out(new, None))
        return self.emit("customer.subscription.updated", new, at, previous_attributes=prev)

    def renewal(self, sub: Obj | str, *, pay: bool = True) -> list[Obj]:
        """The subscription's next period starts, as Stripe does it on its own at the period end: a
        `subscription_cycle` invoice, then `customer.subscription.updated` (automatic, `request.id` null) with the
        new period and `latest_invoice`, and (`pay`) its PaymentIntent succeeding an hour later.

        Nothing about the plan changes, yet from basil on `previous_attributes` carries `items` whole (the period
        lives on each item), and before basil `current_period_start`/`current_period_end` (Stripe changelog,
        basil: "Deprecate subscription current period start and end"; api-facts §6). Returns the events.
        """
        old = self._current(sub)
        items = old["items"]["data"]
        start = int(items[0]["current_period_end"])
        recurring = (items[0].get("price") or {}).get("recurring") or {"interval": "month", "interval_count": 1}
        end = add_interval(start, recurring["interval"], recurring.get("interval_count", 1))
        amount = sum(int(currency_option_amount(self._lookup(str(i["price"]["id"])) or i["price"], old["currency"])
                         or 0) * int(i.get("quantity") or 1) for i in items)
        inv = self.invoice(old["id"], old["customer"], amount, old["currency"], status="open", created=start,
                           period_start=start, period_end=end, attempt_count=0, next_payment_attempt=start + 3600)
        self._save(old)  # the invoice set latest_invoice already: previous_attributes must show the old one
        new_items = clone(old["items"])
        for item in new_items["data"]:
            item["current_period_start"], item["current_period_end"] = start, end
        new = _deep_merge(old, {"items": new_items, "latest_invoice": inv["id"]})
        prev = diff_attributes(self._out(old, None), self._out(new, None))
        events = [self.emit("customer.subscription.updated", new, start, previous_attributes=prev, automatic=True)]
        if pay and amount > 0:
            pi = self.payment_intent(old["customer"], amount, old["currency"], status="requires_confirmation",
                                     invoice=inv["id"], created=start + 3600, description="Subscription update")
            events.append(self.payment_succeeded(pi["id"], start + 3600))
        return events

    def schedule_cancellation(self, sub: Obj | str, cancel_at: int, at: int) -> Obj:
        """Schedule the cancellation for `cancel_at` (a timestamp) while `cancel_at_period_end` stays false
        (`stripe/_subscription.py`, `cancel_at`); emits `customer.subscription.updated`."""
        return self.subscription_updated(sub, {"cancel_at": cancel_at, "canceled_at": at, "cancellation_details": {
            "reason": "cancellation_requested"}}, at)

    def duplicate(self, event: Obj) -> Obj:
        """A second Event object for the same change: same type, time and data, another id. Stripe documents
        that "in some cases, two separate Event objects are generated" for one change (docs.stripe.com/webhooks;
        api-facts §4)."""
        data = event["data"]
        return self._require_sandbox().emit(
            event["type"], clone(data["object"]), created=event["created"], store=False,
            previous_attributes=data.get("previous_attributes"), api_version=event["api_version"],
            event_id=self.new_id("evt"), request=event.get("request"))

    def _replace_items(self, old: Obj, pairs: Sequence[tuple[Obj, int]], at: int) -> Obj:
        old_items = old["items"]["data"]
        by_price = {item["price"]["id"]: item for item in old_items}
        start = old_items[0]["current_period_start"] if old_items else at
        end = old_items[0]["current_period_end"] if old_items else at
        items: list[Obj] = []
        for price, quantity in pairs:
            stored = self._lookup(str(price["id"])) or price
            if stored.get("currency") != old["currency"] and currency_option_amount(stored, old["currency"]) is None:
                # Stripe refuses it: a subscription's currency never changes, and each price must charge in it.
                raise ValueError(f"price {price['id']} has no currency option for {old['currency']}, "
                                 f"the currency of {old['id']}")
            existing = by_price.get(price["id"])
            if existing is not None:
                item = clone(existing)
                item["quantity"] = quantity
            else:
                item = self._subscription_item(old["id"], price, quantity, at, start, end)
            items.append(item)
        return self._items_list(old["id"], items)

    def subscription_deleted(self, sub: Obj | str, at: int, *, reason: str | None = None) -> Obj:
        """Cancel now (status `canceled`, `ended_at` set) and emit `customer.subscription.deleted`."""
        new = self._current(sub)
        if reason is None:
            reason = (
                "payment_failed" if new.get("status") in ("past_due", "unpaid") else "cancellation_requested"
            )
        new["status"] = "canceled"
        new["canceled_at"] = new.get("canceled_at") or at
        new["ended_at"] = at
        details = dict(new.get("cancellation_details") or {"comment": None, "feedback": None})
        details["reason"] = details.get("reason") or reason
        new["cancellation_details"] = details
        return self.emit("customer.subscription.deleted", new, at, automatic=reason == "payment_failed")

    def payment_succeeded(self, pi: Obj | str, at: int) -> Obj:
        """Mark the PaymentIntent succeeded (new paid charge) and emit `payment_intent.succeeded`.

        A linked invoice (and its InvoicePayment) becomes paid in the store too, as it would in Stripe.
        """
        new = self._current(pi)
        charge = self._lookup(str(new.get("latest_charge"))) if new.get("latest_charge") else None
        if charge is None or charge.get("status") != "succeeded":
            charge = self.charge(
                new.get("customer"),
                new["amount"],
                new["currency"],
                payment_intent=new["id"],
                created=at,
                description=new.get("description"),
            )
        new.update(
            status="succeeded",
            amount_received=new["amount"],
            last_payment_error=None,
            latest_charge=charge["id"],
            payment_method=charge["payment_method"],
        )
        for link in self._invoice_payments():
            if (link.get("payment") or {}).get("payment_intent") == new["id"]:
                self._mark_invoice_paid(link, at)
        return self.emit("payment_intent.succeeded", new, at)

    def _mark_invoice_paid(self, link: Obj, at: int) -> Obj | None:
        link = clone(link)
        link.update(status="paid", amount_paid=link["amount_requested"])
        link["status_transitions"] = {"canceled_at": None, "paid_at": at}
        self._save(link)
        inv = self._lookup(str(link["invoice"]))
        if inv is None:
            return None
        inv = clone(inv)
        inv.update(
            status="paid",
            amount_paid=inv["amount_due"],
            amount_remaining=0,
            next_payment_attempt=None,
            auto_advance=False,
        )
        inv["status_transitions"] = {**inv["status_transitions"], "paid_at": at}
        self._save(inv)
        return inv

    def invoice_paid(self, invoice: Obj | str, at: int) -> Obj:
        """Pay the invoice (its PaymentIntent succeeds) and emit `invoice.paid`."""
        inv = self._current(invoice)
        link = self._links.default_payment(inv["id"])
        if link is None:
            pi = self.payment_intent(
                inv["customer"], inv["amount_due"], inv["currency"], created=at, invoice=inv["id"]
            )
            link = self._links.default_payment(inv["id"])
            assert link is not None and pi["id"]
        else:
            pi_id = link["payment"]["payment_intent"]
            pi = self._current(pi_id)
            if pi["status"] != "succeeded":
                charge = self.charge(
                    pi.get("customer"), pi["amount"], pi["currency"], payment_intent=pi_id, created=at
                )
                pi.update(
                    status="succeeded",
                    amount_received=pi["amount"],
                    last_payment_error=None,
                    latest_charge=charge["id"],
                    payment_method=charge["payment_method"],
                )
                self._save(pi)
        paid = self._mark_invoice_paid(link, at)
        return self.emit("invoice.paid", paid or inv, at, automatic=True)

    def attach_payment(self, invoice: Obj | str, pi: Obj | str, at: int) -> Obj:
        """`POST /v1/invoices/{id}/attach_payment` with a PaymentIntent that has already succeeded: the
        InvoicePayment is created, paid, at attach time `at`, which may be long after the PaymentIntent
        succeeded (`stripe/_invoice.py`, `attach_payment`). The invoice is paid; emits `invoice.paid`."""
        inv = self._current(invoice)
        payment = self._current(pi)
        if payment.get("status") != "succeeded":
            raise ValueError("attach_payment here models a PaymentIntent that has already succeeded")
        link = link_invoice_payment(inv["id"], payment["id"], inv["amount_due"], inv["currency"], paid=True,
                                    created=at, inpay_id=self.new_id("inpay"))
        self._save(link)
        paid = self._mark_invoice_paid(link, at)
        return self.emit("invoice.paid", paid or inv, at, automatic=True)

    def invoice_payment_failed(
        self,
        invoice: Obj | str,
        at: int,
        *,
        decline_code: str = "insufficient_funds",
        attempt_count: int | None = None,
        next_payment_attempt: int | _Auto | None = AUTO,
    ) -> Obj:
        """A declined renewal attempt: emit `invoice.payment_failed` (an automatic event, `request.id` null).

        Stores the failed PaymentIntent (`last_payment_error` of type `card_error`, code `card_declined`)
        with its failed Charge (`failure_code`), linked to the invoice by an InvoicePayment.
        """
        inv = self._current(invoice)
        link = self._links.default_payment(inv["id"])
        message = _DECLINE_MESSAGES.get(decline_code, "Your card was declined.")
        charge = self.charge(
            inv["customer"],
            inv["amount_due"],
            inv["currency"],
            status="failed",
            decline_code=decline_code,
            created=at,
            failure_message=message,
        )
        error = {
            "advice_code": _ADVICE_CODES.get(decline_code),
            "charge": charge["id"],
            "code": "card_declined",
            "decline_code": decline_code,
            "doc_url": "https://stripe.com/docs/error-codes/card-declined",
            "message": message,
            "type": "card_error",
        }
        if link is None:
            pi = self.payment_intent(
                inv["customer"],
                inv["amount_due"],
                inv["currency"],
                status="requires_payment_method",
                created=at,
                description="Subscription update" if inv.get("parent") else None,
            )
            pi_id = pi["id"]
            self._save(
                link_invoice_payment(
                    inv["id"],
                    pi_id,
                    inv["amount_due"],
                    inv["currency"],
                    paid=False,
                    created=at,
                    inpay_id=self.new_id("inpay"),
                )
            )
        else:
            pi_id = link["payment"]["payment_intent"]
        pi_state = self._current(pi_id)
        pi_already_failed = link is not None and pi_state.get("last_payment_error") is not None
        pi_state.update(
            status="requires_payment_method",
            amount_received=0,
            last_payment_error=error,
            latest_charge=charge["id"],
            payment_method=None,
        )
        self._save(pi_state)
        ch_state = self._current(charge["id"])
        ch_state["payment_intent"] = pi_id
        self._save(ch_state)
        count = int(inv.get("attempt_count") or 0)
        if attempt_count is not None:
            count = attempt_count
        elif pi_already_failed:
            count += 1  # a further retry of an invoice whose last attempt already failed
        count = max(count, 1)
        if isinstance(next_payment_attempt, _Auto):
            next_payment_attempt = at + 3 * 86400 if count < 4 else None
        inv.update(
            status="open" if inv["status"] == "draft" else inv["status"],
            attempt_count=count,
            attempted=True,
            next_payment_attempt=next_payment_attempt,
        )
        return self.emit("invoice.payment_failed", inv, at, automatic=True)

    # ----------------------------------------------------------------- refunds, disputes, credit notes

    def _charge_of(self, payment: Obj | str) -> Obj:
        """The succeeded Charge of a PaymentIntent (`pi_…`) or the Charge itself (`ch_…`), canonical."""
        obj = self._current(payment)
        if obj.get("object") == "payment_intent":
            obj = self._current(str(obj["latest_charge"]))
        return obj

    def _refund_events_exist(self) -> bool:
        return self.api_version[:10] >= REFUND_EVENTS_FROM

    def refund(self, payment: Obj | str, amount: int | None, at: int, *, status: str = "succeeded",
               reason: str | None = "requested_by_customer") -> tuple[Obj, list[Obj]]:
        """Refund `amount` (default: what is left) of a PaymentIntent's or Charge's payment.

        Like Stripe: the Charge's `amount_refunded` grows (a pending refund counts until it fails) and
        `refunded` turns true once all of it is; `PaymentIntent.amount_received` never drops; the events are
        `charge.refunded`, and from 2024-10-28.acacia also `refund.created` (api-facts "Refunds").
        Returns the Refund and the events."""
        charge = self._charge_of(payment)
        left = int(charge["amount_captured"]) - int(charge.get("amount_refunded") or 0)
        amount = left if amount is None else amount
        if not 0 < amount <= left:
            raise ValueError(f"cannot refund {amount} of {charge['id']}: {left} is left")
        refund: Obj = {
            "id": self.new_id("re"), "object": "refund", "amount": amount,
            "balance_transaction": self.new_id("txn") if status == "succeeded" else None,
            "charge": charge["id"], "created": at, "currency": charge["currency"],
            "destination_details": {"card": {"reference_status": "pending", "type": "refund"}, "type": "card"},
            "metadata": {}, "payment_intent": charge.get("payment_intent"), "reason": reason,
            "receipt_number": None, "source_transfer_reversal": None, "status": status,
            "transfer_reversal": None,
        }
        self._save(refund)
        charge["amount_refunded"] = int(charge.get("amount_refunded") or 0) + amount
        charge["refunded"] = charge["amount_refunded"] >= int(charge["amount_captured"])
        events = [self.emit("charge.refunded", charge, at)]
        if self._refund_events_exist():
            events.append(self.emit("refund.created", refund, at))
        return self._out(refund, None), events

    def refund_updated(self, refund: Obj | str, status: str, at: int) -> list[Obj]:
        """A refund turns `succeeded`, `failed` or `canceled`: a failed or canceled one no longer counts in its
        Charge's `amount_refunded`. Events: `refund.updated` (and `refund.failed`) from acacia on,
        `charge.refund.updated` before."""
        new = self._current(refund)
        old_status = new["status"]
        new["status"] = status
        if status == "failed":
            new["failure_reason"] = "expired_or_canceled_card"
        self._save(new)
        charge = self._current(str(new["charge"]))
        if status in ("failed", "canceled") and old_status in ("pending", "succeeded", "requires_action"):
            charge["amount_refunded"] = max(0, int(charge["amount_refunded"]) - int(new["amount"]))
            charge["refunded"] = False
            self._save(charge)
        prev = {"status": old_status}
        if not self._refund_events_exist():
            return [self.emit("charge.refund.updated", new, at, previous_attributes=prev, automatic=True)]
        events = [self.emit("refund.updated", new, at, previous_attributes=prev, automatic=True)]
        if status == "failed":
            events.append(self.emit("refund.failed", new, at, automatic=True))
        return events

    def dispute(self, payment: Obj | str, at: int, *, amount: int | None = None, reason: str = "fraudulent",
                due_in_days: int = 7) -> tuple[Obj, list[Obj]]:
        """A chargeback on a payment: `charge.dispute.created` then `charge.dispute.funds_withdrawn`; the Charge
        becomes `disputed` (api-facts "Disputes"; stripe/_dispute.py)."""
        charge = self._charge_of(payment)
        dispute: Obj = {
            "id": self.new_id("dp"), "object": "dispute",
            "amount": int(charge["amount_captured"]) if amount is None else amount,
            "balance_transactions": [], "charge": charge["id"], "created": at, "currency": charge["currency"],
            "evidence": {}, "evidence_details": {"due_by": at + due_in_days * 86400, "has_evidence": False,
                                                 "past_due": False, "submission_count": 0},
            "is_charge_refundable": False, "livemode": False, "metadata": {},
            "payment_intent": charge.get("payment_intent"), "reason": reason, "status": "needs_response",
        }
        self._save(dispute)
        charge["disputed"] = True
        self._save(charge)
        events = [self.emit("charge.dispute.created", dispute, at, automatic=True),
                  self.emit("charge.dispute.funds_withdrawn", dispute, at, automatic=True)]
        return self._out(dispute, None), events

    def dispute_closed(self, dispute: Obj | str, status: str, at: int) -> list[Obj]:
        """The card network's decision: `won` (the funds come back: `funds_reinstated` too) or `lost`."""
        if status not in ("won", "lost"):
            raise ValueError("a dispute closes as won or lost")
        new = self._current(dispute)
        prev = {"status": new["status"]}
        new["status"] = status
        events = [self.emit("charge.dispute.closed", new, at, previous_attributes=prev, automatic=True)]
        if status == "won":
            events.append(self.emit("charge.dispute.funds_reinstated", new, at, automatic=True))
        return events

    def credit_note(self, invoice: Obj | str, amount: int, at: int, *, refund: bool = False,
                    reason: str | None = "order_change") -> tuple[Obj, list[Obj]]:
        """A CreditNote on an invoice (stripe/_credit_note.py): on an open invoice it lowers what is due
        (`pre_payment_amount`); on a paid one it is refunded (`refund=True`: a Refund is made and named in
        `refunds`) or credited to the customer balance (`post_payment_amount`). Emits `credit_note.created`."""
        inv = self._current(invoice)
        paid = inv.get("status") == "paid"
        refunds: list[Obj] = []
        if refund:
            if not paid:
                raise ValueError("only a paid invoice's credit note can be refunded")
            link = next(p for p in self._invoice_payments() if p.get("invoice") == inv["id"])
            made, _ = self.refund(link["payment"]["payment_intent"], amount, at)
            refunds.append({"amount_refunded": amount, "refund": made["id"]})
        note: Obj = {
            "id": self.new_id("cn"), "object": "credit_note", "amount": amount, "amount_shipping": 0,
            "created": at, "currency": inv["currency"], "customer": inv["customer"],
            "customer_balance_transaction": None if refund or not paid else self.new_id("cbtxn"),
            "discount_amount": 0, "discount_amounts": [], "invoice": inv["id"], "livemode": False,
            "memo": None, "metadata": {}, "number": f"{inv.get('number') or 'CN'}-CN{self._rng.randint(1, 99)}",
            "out_of_band_amount": None, "pdf": "https://pay.stripe.com/credit_notes/sandbox/pdf",
            "post_payment_amount": amount if paid else 0, "pre_payment_amount": 0 if paid else amount,
            "reason": reason, "refunds": refunds, "status": "issued", "subtotal": amount,
            "subtotal_excluding_tax": amount, "total": amount, "total_excluding_tax": amount,
            "type": "post_payment" if paid else "pre_payment", "voided_at": None,
        }
        self._save(note)
        key = "post_payment_credit_notes_amount" if paid else "pre_payment_credit_notes_amount"
        inv[key] = int(inv.get(key) or 0) + amount
        if not paid:
            inv["amount_due"] = max(0, int(inv["amount_due"]) - amount)
            inv["amount_remaining"] = max(0, int(inv.get("amount_remaining") or 0) - amount)
        self._save(inv)
        return self._out(note, None), [self.emit("credit_note.created", note, at)]

    def credit_note_voided(self, note: Obj | str, at: int) -> list[Obj]:
        """Void a credit note (`status: void`): it no longer lowers its invoice. Emits `credit_note.voided`."""
        new = self._current(note)
        new.update(status="void", voided_at=at)
        inv = self._current(str(new["invoice"]))
        key = "post_payment_credit_notes_amount" if new["type"] == "post_payment" else "pre_payment_credit_notes_amount"
        inv[key] = max(0, int(inv.get(key) or 0) - int(new["amount"]))
        self._save(inv)
        return [self.emit("credit_note.voided", new, at, previous_attributes={"status": "issued", "voided_at": None})]
