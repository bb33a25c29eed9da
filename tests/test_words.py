"""Count words agree with their numbers in what people read (issue 20 §5: "1 events were dead-lettered")."""

from __future__ import annotations

import re

from stripe_sf_sync.cli import app
from stripe_sf_sync.words import counted

from .conftest import since

# A number followed by a plural count word: wrong after a 1.
ONE_PLURAL = re.compile(r"(?<![\d.,])1 (events|records|calls|Stripe calls|Salesforce calls|dead letters|open dead "
                        r"letters|mismatches|rows|objects|times|warnings|errors|subscriptions|accounts)\b")


def test_counted_agrees_with_its_number():
    assert counted(1, "event") == "1 event" and counted(0, "event") == "0 events"
    assert counted(2, "mismatch", "mismatches") == "2 mismatches"
    assert counted(1, "mismatch", "mismatches") == "1 mismatch"
    assert counted(1, "event was", "events were") == "1 event was"


def test_one_dead_letter_reads_in_the_singular_everywhere(runner, config, cli_env, sc):
    assert len(sc.unmatched_events) == 1
    synced = runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)], env=cli_env)
    assert "1 event was dead-lettered: see `stripe-sf dlq list`" in synced.stderr, synced.stderr
    outputs = [synced.stdout, synced.stderr]
    for args in (["dlq", "list"], ["status"], ["status", "--check", "--max-dead-letters", "0"]):
        result = runner.invoke(app, [*args, "--config", str(config)], env=cli_env)
        outputs += [result.stdout, result.stderr]
    text = "\n".join(outputs)
    assert "1 open dead letter\n" in text or "1 open dead letter " in text, text
    assert "problem: 1 open dead letter, more than 0" in text
    assert not ONE_PLURAL.findall(text), ONE_PLURAL.findall(text)
