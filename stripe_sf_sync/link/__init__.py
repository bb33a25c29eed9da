"""`stripe-sf link`: propose, review and apply the links between Stripe customers and Salesforce Accounts
(issue 25). evidence.py matches (pure), read.py reads both sides in batches, csvfile.py holds the reviewed
file, apply.py writes the links, run.py is what the CLI calls."""

from stripe_sf_sync.link.run import ApplyResult, ProposeResult, run_link, run_link_apply

__all__ = ["ApplyResult", "ProposeResult", "run_link", "run_link_apply"]
