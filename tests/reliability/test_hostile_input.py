"""Hostile and malformed input: property-based payloads at the model+rules level (many examples) and through
the pipeline (fewer), hostile metadata that must never reach SOQL or a URL, and config fuzz."""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from typer.testing import CliRunner

from stripe_sf_sandbox.stripe_factory import StripeFactory
from stripe_sf_sync.cli import app
from stripe_sf_sync.config import load_config
from stripe_sf_sync.errors import ConfigError, ExitCode
from stripe_sf_sync.state import StateStore

from .. import payloads as p
from . import fuzz
from .world import STATE_NAME, World, build_world, discover, state_rows, sync, write_config

MODEL_EXAMPLES = 1500
NOW = int(time.time())


# --- model + rules + resolution, many examples ---------------------------------------------------------

@settings(max_examples=MODEL_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz.hostile_events())
def test_every_hostile_event_is_applied_dead_lettered_or_ignored_with_a_reason(event):
    try:
        outcome, reason = fuzz.process(event)
    except Exception as exc:
        if fuzz.known_bug(exc):  # a reported, not yet fixed bug (see fuzz.KNOWN_BUGS)
            return
        raise
    assert outcome in ("applied", "dead_letter", "ignored")
    assert outcome == "applied" or reason


@pytest.mark.parametrize("version", [p.CURRENT, p.PRE_BASIL])
def test_hostile_metadata_never_becomes_an_id(version):
    for value in fuzz.HOSTILE_METADATA:
        sub = p.subscription(version=version, metadata={"salesforce_opportunity_id": value,
                                                        "salesforce_account_id": value})
        assert fuzz.process(p.event("customer.subscription.created", sub, version=version))[0] == "applied"


def _crashes(event: dict) -> BaseException | None:
    try:
        fuzz.process(event)
    except Exception as exc:
        return exc
    return None


@pytest.mark.parametrize("case", ["created", "next_payment_attempt", "period_end"])
def test_timestamps_past_year_9999_are_dead_lettered_not_a_crash(case):
    if case == "created":
        event = p.event("customer.subscription.created", p.subscription(), created=2**40)
    elif case == "next_payment_attempt":
        event = p.event("invoice.payment_failed", p.invoice(next_payment_attempt=10**12))
    else:
        event = p.event("customer.subscription.updated", p.subscription(cancel_at_period_end=True, period_end=10**12),
                        previous={"cancel_at_period_end": False})
    assert _crashes(event) is None


@pytest.mark.parametrize("field", ["unit_amount_decimal", "quantity"])
def test_huge_unit_amounts_and_quantities_are_dead_lettered_not_a_crash(field):
    sub = p.subscription()
    if field == "quantity":
        sub["items"]["data"][0]["quantity"] = 10**30
    else:
        sub["items"]["data"][0]["price"]["unit_amount_decimal"] = "1E+40"
    assert _crashes(p.event("customer.subscription.created", sub)) is None


# --- through the pipeline, fewer examples ---------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[World, Path]]:
    with build_world(NOW, extra=2) as world:
        cfg = discover(write_config(tmp_path_factory.mktemp("hostile")), world)
        sync(cfg, world.env(), since=world.since)
        yield world, cfg


_counter = [0]


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.lists(fuzz.hostile_events(), min_size=1, max_size=3))
def test_hostile_events_through_the_pipeline_never_stop_a_run(live, events):
    world, cfg = live
    for ev in events:
        assume(ev.get("type") in fuzz.model.EVENT_TYPES and isinstance(ev.get("data"), dict))
        crash = _crashes(ev)
        assume(crash is None or not fuzz.known_bug(crash))
    ids = []
    for ev in events:
        _counter[0] += 1
        obj = ev["data"].get("object")
        sent = world.stripe.emit(ev["type"], obj if isinstance(obj, dict) else {"object": obj},
                                 created=int(time.time()) - 5, store=False,
                                 event_id=f"evt_Hostile{_counter[0]:06d}x", api_version=p.CURRENT)
        ids.append(sent["id"])
    sync(cfg, world.env())  # raises if the run stops
    rows = state_rows(cfg.parent / STATE_NAME)
    assert rows["integrity"] == "ok"
    for eid in ids:
        assert rows["events"].get(eid) in ("applied", "dead_letter", "ignored"), eid
        if rows["events"][eid] == "dead_letter":
            assert rows["dead"][eid]["reason"] and rows["dead"][eid]["code"]
    assert rows["cursor"] == ids[-1]


def test_a_poison_event_is_dead_lettered_and_the_run_goes_on(tmp_path):
    with build_world(NOW, extra=0) as world:
        cfg = discover(write_config(tmp_path), world)
        f = StripeFactory(world.stripe, seed=77)
        cus = f.customer("Poison", "p@example.com")
        world.org.insert("Account", {"Name": "Poison", "Stripe_Customer_ID__c": cus["id"]})
        t = NOW - 3600
        sub = f.subscription(cus["id"], [(f.price(1000), 10**30)], created=t)
        poison = f.subscription_created(sub, t)
        inv = f.invoice(None, cus["id"], 1000, "usd", created=t + 1, next_payment_attempt=10**12)
        late = f.invoice_payment_failed(inv["id"], t + 2, next_payment_attempt=10**12)
        summary = sync(cfg, world.env(), since=world.since)
        assert summary.dead_lettered >= 1
        with StateStore.open(cfg.parent / STATE_NAME) as st_:
            assert {poison["id"], late["id"]} <= set(st_.outcomes_for([poison["id"], late["id"]]))


# --- hostile metadata never reaches SOQL or a URL ------------------------------------------------------

class Recording(requests.Session):
    seen: list[str]

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def, override]
        body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
        self.seen.append(f"{request.method} {unquote_plus(request.url)} {body}")
        return super().send(request, **kwargs)


@pytest.mark.parametrize(("value", "slots"), [
    ("' OR Name != '", "both"), ("../../sobjects/User", "both"), ("%2F..%2Fsobjects%2FUser", "both"),
    ("\\' OR 1=1 --", "both"),
    ("003Hs00000CmAbc", "both"),  # a Contact Id: the wrong key prefix for an Account and an Opportunity
    ("001Hs00000CmAbc", "opportunity"),  # an Account Id where an Opportunity Id belongs
    ("006Hs00000BkXyzIAX", "both"),  # an 18-character Id with a wrong checksum
])
def test_hostile_metadata_never_reaches_soql_a_url_or_a_record(tmp_path, value, slots):
    with build_world(NOW, extra=0) as world:
        seen: list[str] = []

        def session() -> requests.Session:
            s = Recording()
            s.seen = seen
            s.trust_env = False
            s.verify = world.sf.ca_path
            return s

        env = world.env()
        env.session_factory = session
        cfg = discover(write_config(tmp_path), world)
        f = StripeFactory(world.stripe, seed=99)
        md = {"salesforce_opportunity_id": value}
        if slots == "both":
            md["salesforce_account_id"] = value
        cus = f.customer("Mallory", "m@example.com", metadata=md)
        world.org.insert("Account", {"Name": "Mallory", "Stripe_Customer_ID__c": cus["id"]})
        sub = f.subscription(cus["id"], [(f.price(1000), 1)], metadata=md)
        ev = f.subscription_created(sub, NOW - 600)
        seen.clear()
        sync(cfg, env, since=world.since)
        assert seen, "the recording session saw no request"
        for line in seen:
            assert value not in line and value.upper() not in line
        for _, path in world.sf.requests_log:
            assert ".." not in path and "sobjects/User" not in path
        with StateStore.open(cfg.parent / STATE_NAME) as st_:
            assert st_.outcomes_for([ev["id"]]) == {ev["id"]: "applied"}  # matched by the customer id instead
        opp = next(o for o in world.org.records("Opportunity") if o.get("Stripe_Subscription_ID__c") == sub["id"])
        assert opp["Name"].startswith("Mallory")


# --- config fuzz -----------------------------------------------------------------------------------------

KEYS = ["stripe", "salesforce", "sync", "api_version", "requests_per_second", "timeout_seconds", "dashboard_url",
        "won_stage", "record_types", "opportunity_record_type", "fields", "api_budget", "state_path", "batch_size",
        "coalesce", "log_format", "mrr", "account_csm", "bogus", "", "ü"]
yaml_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
                | st.sampled_from(["012Hs00000AbCdEIAV", "New Business", "-1", "1e9", "0", "auto", "https://x"]))
yaml_docs = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=3)
                         | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), c, max_size=4), max_leaves=12)


def _valid_shaped() -> st.SearchStrategy:
    """Mostly-right configs with one wrong value: the keys exist, the types do not."""
    return st.fixed_dictionaries({
        "stripe": st.fixed_dictionaries({}, optional={"timeout_seconds": yaml_scalars, "api_version": yaml_scalars,
                                                      "requests_per_second": yaml_scalars}),
        "salesforce": st.fixed_dictionaries({}, optional={"won_stage": yaml_scalars, "record_types": yaml_docs,
                                                          "api_budget": yaml_scalars, "fields": yaml_docs}),
        "sync": st.fixed_dictionaries({}, optional={"batch_size": yaml_scalars, "state_path": yaml_scalars,
                                                    "log_format": yaml_scalars}),
    })


def yaml_text(doc: object) -> str:
    """A generated document as YAML text (ruamel.yaml's safe dumper, as a person's file would be written)."""
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(doc, out)
    return out.getvalue()


def _check_config(tmp: Path, text: str | bytes) -> None:
    path = tmp / "sync.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and str(exc).startswith("Invalid")


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.one_of(yaml_docs, _valid_shaped()).map(yaml_text)
       | st.text(max_size=200) | st.binary(max_size=100))
def test_any_config_is_loaded_or_a_config_error(tmp_path_factory, text):
    _check_config(tmp_path_factory.mktemp("cfg"), text)


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    _check_config(tmp_path, "[" * 5000 + "]" * 5000)


@settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(yaml_docs, _valid_shaped()).map(yaml_text)
       | st.sampled_from(["sync: [", "\t- x", "stripe: {timeout_seconds: -1}\nbogus: 1\n",
                        "!!python/object:os.system {}"]))
def test_the_cli_turns_any_bad_config_into_exit_2_without_a_traceback(tmp_path_factory, text):
    cfg = tmp_path_factory.mktemp("cli") / "sync.yaml"
    cfg.write_text(text, encoding="utf-8", errors="surrogatepass")
    for args in (["sync", "--config", str(cfg), "--since", "2026-11-01"], ["status", "--config", str(cfg)]):
        result = CliRunner().invoke(app, [*args], env={"STRIPE_API_KEY": "", "SF_INSTANCE_URL": "",
                                                         "SF_ACCESS_TOKEN": ""})
        assert "Traceback" not in result.output
        if args[0] == "sync":
            assert result.exit_code == ExitCode.CONFIG, result.output
        else:  # a config that loads: nothing has run yet, which status reports ("Never run", exit 0)
            assert result.exit_code in (ExitCode.CONFIG, ExitCode.STATE, ExitCode.OK), result.output
            assert result.exit_code != ExitCode.OK or "Never run" in result.output


def test_copy_is_unchanged():  # the strategies never mutate the shared base payloads
    before = copy.deepcopy(fuzz.BASES)
    fuzz.process(fuzz.BASES[0])
    assert fuzz.BASES == before
