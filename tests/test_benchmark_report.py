"""The benchmark's pure parts: config overrides, the floor, the targets and the report. No stand-ins run."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import backfill_run, harness
from benchmarks import run as bench
from benchmarks.harness import BATCHED, PER_EVENT, Floor, RunResult, set_yaml_value
from stripe_sf_sync.salesforce.gateway import COLLECTION_LIMIT, COMPOSITE_QUERIES
from stripe_sf_sync.salesforce.lookups import IN_CHUNK

WRITTEN = {"Opportunity": 3_100, "Task": 5_000, "Account": 900}
LOOKUPS = {"Account.Id": 30, "Account.Stripe_Customer_ID__c": 950, "Opportunity.Stripe_Subscription_ID__c": 2_100,
           "Opportunity.Stripe_Payment_Intent_ID__c": 1_400, "Opportunity.Stripe_Customer_ID__c": 800}


def _run(mode: str, events: int, *, sf: int, stripe: int, wall: float, rss: float,
         extrapolated_to: int | None = None, scale: int = 1) -> RunResult:
    """A run whose distinct records and lookup keys are WRITTEN and LOOKUPS times `scale`."""
    return RunResult(mode, extrapolated_to or events, events, events, 0, events, sf, sf, sf, stripe, stripe, wall,
                     wall / 10, rss, rss, extrapolated_to, {k: v * scale for k, v in WRITTEN.items()},
                     {k: v * scale for k, v in LOOKUPS.items()})


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"sf_latency_ms": 20.0, "stripe_latency_ms": 10.0, "stripe_rps": None,
                               "events": [10_000, 100_000], "throughput": False}
    return argparse.Namespace(**{**base, **kw})


def _report(*, batched_sf: int = 120, stripe: int = 100, batched_wall: float = 10.0, rss_big: float = 90.0,
            throughput: RunResult | None = None) -> bench.Report:
    sizes = []
    for n, rss in ((10_000, 80.0), (100_000, rss_big)):
        k = n // 10_000
        batched = _run(BATCHED, n, sf=batched_sf * k, stripe=stripe * k, wall=batched_wall * k, rss=rss, scale=k)
        sample = _run(PER_EVENT, 1_000, sf=2_600, stripe=900, wall=90.0, rss=70.0, extrapolated_to=n)
        sizes.append(bench.SizeReport(n, batched, sample))
    return bench.Report({"cpu_model": "test", "cpus": 2, "memory_gib": 1.0, "python": "3", "commit": "x"},
                        {"sf_latency_ms": 20.0, "stripe_latency_ms": 10.0, "seed": 42, "stripe_rps": None},
                        sizes, throughput=throughput)


def _verdicts(report: bench.Report, args: argparse.Namespace) -> dict[str, bool | None]:
    return {t.number: t.met for t in bench.evaluate(report, args)}


# --- config overrides ---------------------------------------------------------------------------------


def test_set_yaml_value_replaces_the_one_key_and_keeps_comments() -> None:
    text = "sync:\n  # Events per batch.\n  batch_size: 2000  # tuned\n  coalesce: true\n"
    out = set_yaml_value(set_yaml_value(text, "batch_size", "1"), "coalesce", "false")
    assert out == "sync:\n  # Events per batch.\n  batch_size: 1  # tuned\n  coalesce: false\n"


@pytest.mark.parametrize("text", ["sync:\n  size: 2\n", "a:\n  batch_size: 1\nb:\n  batch_size: 2\n"])
def test_set_yaml_value_fails_loudly_unless_exactly_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        set_yaml_value(text, "batch_size", "1")


def test_per_event_config_whatever_the_default_batch_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = set_yaml_value(harness.example_config(), "batch_size", "2000")  # a default other than 500
    monkeypatch.setattr(harness, "example_config", lambda: example)
    text = harness.write_config(tmp_path / "sync.yaml", PER_EVENT, stripe_rps=100).read_text()
    assert "\n  batch_size: 1\n" in text and "\n  coalesce: false\n" in text
    assert "requests_per_second: 100\n" in text and "account_csm: CSM__c" in text
    batched = harness.write_config(tmp_path / "b.yaml", BATCHED).read_text()
    assert "batch_size: 2000" in batched and "coalesce: true" in batched


def test_every_override_matches_the_packaged_example(tmp_path: Path) -> None:
    for mode in harness.MODES:
        harness.write_config(tmp_path / f"{mode}.yaml", mode, stripe_rps=50)
    backfill_run.write_config(tmp_path / "backfill.yaml", chunk=1000, stripe_rps=100)


# --- the floor -----------------------------------------------------------------------------------------


def test_floor_counts_writes_lookups_and_the_describe() -> None:
    f = Floor({"Opportunity": 401, "Task": 200, "Account": 0},
              {"a": 1, "b": 200, "c": 201, "d": 5, "e": 6, "f": 7})
    assert f.writes == {"Opportunity": 3, "Task": 1}
    assert f.queries == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1, "f": 1}
    assert f.lookup_calls == 2  # 7 queries, 5 to a Composite call
    assert f.total == 3 + 1 + 2 + 1
    assert f.as_dict()["total"] == f.total


def test_floor_uses_the_pipelines_own_limits() -> None:
    f = Floor({}, {})
    assert (f.write_limit, f.in_chunk, f.per_composite) == (COLLECTION_LIMIT, IN_CHUNK, COMPOSITE_QUERIES)
    assert f.total == 0  # nothing to write or look up: not even the describe


def test_floor_of_a_run_and_extrapolation() -> None:
    r = _run(PER_EVENT, 1_000, sf=2_600, stripe=900, wall=90.0, rss=70.0, extrapolated_to=10_000)
    s = r.scaled()
    assert (s.events, s.sf_calls, s.stripe_calls, s.wall_s, s.peak_rss_mib) == (10_000, 26_000, 9_000, 900.0, 70.0)
    assert s.written == WRITTEN and s.floor().total == r.floor().total
    # 16 + 25 + 5 writes; 1 + 5 + 11 + 7 + 4 = 28 queries -> 6 calls; 1 describe
    assert r.floor().total == 46 + 6 + 1


# --- targets ---------------------------------------------------------------------------------------------


def test_targets_all_met() -> None:
    report = _report(batched_sf=60, stripe=100, batched_wall=10.0, rss_big=90.0)
    backfill = {"runs": [{"subscriptions": 10_000, "peak_rss_mib": 100.0},
                         {"subscriptions": 100_000, "peak_rss_mib": 110.0}]}
    report.backfill = backfill
    assert _verdicts(report, _args()) == {"1a": True, "1b": True, "2": True, "3": True, "4": None, "5a": True,
                                          "5b": True}


def test_targets_not_met() -> None:
    report = _report(batched_sf=181, stripe=3_781, batched_wall=200.0, rss_big=300.0)
    report.backfill = {"runs": [{"subscriptions": 10_000, "peak_rss_mib": 100.0},
                                {"subscriptions": 100_000, "peak_rss_mib": 150.0}]}
    assert _verdicts(report, _args()) == {"1a": False, "1b": False, "2": False, "3": False, "4": None,
                                          "5a": False, "5b": False}


def test_time_targets_need_the_default_latencies_and_the_configs_pacing() -> None:
    report = _report(batched_wall=1.0)
    assert _verdicts(report, _args())["3"] is True
    assert _verdicts(report, _args(stripe_rps=100.0))["3"] is None
    assert _verdicts(report, _args(sf_latency_ms=5.0))["3"] is None


def test_throughput_is_judged_at_zero_latency_only() -> None:
    fast = _run(BATCHED, 10_000, sf=60, stripe=100, wall=1.8, rss=80.0)
    slow = _run(BATCHED, 10_000, sf=60, stripe=100, wall=8.0, rss=80.0)
    assert _verdicts(_report(throughput=fast), _args())["4"] is True
    assert _verdicts(_report(throughput=slow), _args())["4"] is False
    assert _verdicts(_report(throughput=fast), _args(stripe_rps=100.0))["4"] is None
    # With zero latency the batched runs themselves are judged: 10,000 events in 10 s is 1,000/s.
    assert _verdicts(_report(batched_wall=10.0), _args(sf_latency_ms=0.0, stripe_latency_ms=0.0))["4"] is False


def test_short_runs_are_shown_but_rates_not_judged() -> None:
    small = _run(BATCHED, 300, sf=7, stripe=5, wall=0.5, rss=70.0)
    report = bench.Report({}, {}, [bench.SizeReport(300, small, None)])
    targets = {t.number: t for t in bench.evaluate(report, _args(events=[300]))}
    assert targets["1b"].met is None and "23.3 at 300 not judged" in targets["1b"].measured
    assert targets["2"].met is None
    assert targets["1a"].met is not None  # the floor holds at any size


@pytest.mark.parametrize(("small", "big", "met"), [
    (80.0, 90.0, True), (80.0, 100.0, False), (150.0, 195.0, False), (None, 150.0, None), (None, 250.0, False),
    (80.0, None, None)])
def test_rss_target(small: float | None, big: float | None, met: bool | None) -> None:
    assert bench.rss_target(small, big)[1] is met


def test_backfill_verdict_matches_benchmarks_run() -> None:
    runs = [{"subscriptions": 10_000, "peak_rss_mib": 100.0}, {"subscriptions": 100_000, "peak_rss_mib": 118.0}]
    assert backfill_run.evaluate(runs)["met"] is True
    assert bench.backfill_rss({"runs": runs})[1] is True
    assert bench.backfill_rss(None)[1] is None


def test_throughput_size() -> None:
    assert bench.throughput_size(_args(throughput=True)) == 10_000
    assert bench.throughput_size(_args(throughput=True, events=[300, 5_000, 20_000])) == 5_000
    assert bench.throughput_size(_args(throughput=True, events=[300])) == 300
    assert bench.throughput_size(_args(throughput=False)) is None
    assert bench.throughput_size(_args(throughput=True, sf_latency_ms=0.0, stripe_latency_ms=0.0)) is None


# --- output ----------------------------------------------------------------------------------------------


def test_markdown_and_json() -> None:
    report = _report()
    report.targets = bench.evaluate(report, _args())
    text = bench.markdown(report)
    assert "| batched (10,000) |" in text and "*extrapolated*" in text and "per-event ÷ batched" in text
    assert "| 10,000 | Account 900 → 5, Opportunity 3,100 → 16, Task 5,000 → 25 |" in text
    assert "| 1a | Salesforce calls vs floor |" in text and "| 5b | Peak RSS, backfill |" in text
    data = json.loads(json.dumps(bench.as_json(report)))
    size = data["sizes"][0]
    assert size["floor"]["total"] == 53 and size["batched_over_floor"] == round(120 / 53, 2)
    assert size["per_event_over_batched"]["sf_calls"] == round(26_000 / 120, 2)
    assert [t["number"] for t in data["targets"]] == ["1a", "1b", "2", "3", "4", "5a", "5b"]


def test_profile_paths() -> None:
    assert harness.profile_paths(Path("p.txt")) == (Path("p.txt"), Path("p.txt.prof"))
    assert harness.profile_paths(Path("p.prof")) == (Path("p.txt"), Path("p.prof"))


def test_cpu_per_1000_events_is_the_sync_only_share() -> None:
    report = _report()
    batched = report.sizes[0].batched
    report.sizes[0].batched = dataclasses.replace(batched, sync_cpu_s=2.5, standins_cpu_s=1.2)  # over 10,000 events
    report.targets = bench.evaluate(report, _args())
    assert report.sizes[0].batched.cpu_ms_per_1000 == 250.0
    assert "| CPU per 1,000 events (sync only) |" in bench.markdown(report)
    assert "| 1.0 s | 250 ms | 1,000 |" in bench.markdown(report)
    assert "batched (10,000): the stand-ins (the harness process) used 1.2 s of CPU during the sync, 120 ms per " \
           "1,000 events." in bench.markdown(report)
    assert bench.as_json(report)["sizes"][0]["batched"]["cpu_ms_per_1000_events"] == 250.0
    scaled = dataclasses.replace(report.sizes[0].baseline, sync_cpu_s=0.5).scaled()
    assert scaled.sync_cpu_s == 5.0 and scaled.cpu_ms_per_1000 == 500.0
