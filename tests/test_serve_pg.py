"""`stripe-sf serve` on two replicas sharing one PostgreSQL store: a delivery to either is kept once in the
shared inbox, applied once by whichever worker holds the run lock; no SQLite file is made."""

from __future__ import annotations

import dataclasses

from .state_backends import STATE_NAME, Backend
from .test_serve import acme_opportunities, deliver, event_of, eventually, serving


def test_two_replicas_share_the_inbox_and_apply_a_redelivered_event_once(config, env, org, sc, stripe_sb, pg_url):
    env = dataclasses.replace(env, env={**env.env, "STRIPE_SF_STATE_URL": pg_url})
    state = Backend("postgresql", config.parent / STATE_NAME, pg_url)
    event = event_of(stripe_sb, sc.events[0])
    with serving(config, env) as (first, _a), serving(config, env) as (second, _b):
        assert deliver(first, event).json() == {"received": True, "duplicate": False}
        assert deliver(second, event).json() == {"received": True, "duplicate": True}  # Stripe's retry
        [opp] = eventually(lambda: acme_opportunities(org, sc))
        assert opp["StageName"] == "Closed Won"
        eventually(lambda: state.execute("SELECT event_id, status FROM inbox") == [(event["id"], "done")])
    assert state.rows()["events"] == {event["id"]: "applied"}
    assert not (config.parent / STATE_NAME).exists()
