"""reconcile: compare Salesforce with what the rules compute from Stripe today, object by object.

Both sides are spilled to a temporary SQLite database (`Spill`, keyed by Stripe id and indexed), then
joined in SQL; the rows stream out of the joins, so memory stays flat however many objects there are.
What Salesforce should hold is never computed here: each Stripe object becomes backfill's synthetic event and
goes through the pipeline's own planning (pipeline/plan.py: parse → guard → hydrate → plan; read.py), so
reconcile and sync cannot disagree.

  read.py     StripeReader (Stripe's lists, planned) and read_salesforce (SOQL pages) -> the spill
  spill.py    Spill: both sides in a temporary SQLite database; sf_decimal and text, the numbers' exact text
  compare.py  compare(spill, ...) -> Report: the checks, one join each; mrr_totals; OBJECTS
  report.py   KINDS, Finding, Report, write_csv

Drift kinds (stable names, used in `--json` and `--csv`):
- missing_opportunity: a live subscription (active, trialing, past_due, unpaid) with no won Opportunity;
- value_mismatch: a won Opportunity whose Amount, MRR or ARR differs from the rules' values today;
- status_mismatch: an Account whose subscription status differs from its customer's deciding subscription
  (the newest running one, else the newest: rules/status.py, as backfill decides it);
- missing_payment_opportunity: a succeeded one-time PaymentIntent with no won Opportunity;
- unknown_stripe_id: an Opportunity or Account naming a Stripe id Stripe does not know;
- account_mrr_mismatch: an Account whose MRR field (salesforce.fields.account_mrr) differs from its customer's
  MRR as Stripe counts it (the next sync or backfill of its subscriptions rewrites it);
- salesforce_owned (information): a compared field the mapping gives Salesforce differs (never repaired);
- won_but_canceled (information): a won Opportunity whose subscription is canceled in Stripe;
- unverifiable (information): a Stripe object the rules cannot compute (sync dead-letters it too).
"""

from __future__ import annotations

from stripe_sf_sync.reconcile.compare import (
    OBJECTS,
    compare,
    compare_account_mrr,
    compare_accounts,
    compare_info,
    compare_payments,
    compare_subscriptions,
    compare_unknown,
    mrr_totals,
)
from stripe_sf_sync.reconcile.report import CSV_COLUMNS, KINDS, Finding, Kind, Report, write_csv
from stripe_sf_sync.reconcile.spill import Spill, sf_decimal, text

__all__ = ["CSV_COLUMNS", "KINDS", "OBJECTS", "Finding", "Kind", "Report", "Spill", "compare",
           "compare_account_mrr", "compare_accounts", "compare_info", "compare_payments", "compare_subscriptions",
           "compare_unknown", "mrr_totals", "sf_decimal", "text", "write_csv"]
