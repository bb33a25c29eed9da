"""The operations behind each command: build clients from config and environment, run, record.

The CLI parses arguments and calls exactly one function here, then hands the result to `render`. One
module per command (sync, backfill, reconcile, dlq, status, discover, migrate, doctor, setup, webhooks, sandbox);
`runtime` and `recorded` hold what they share. The names other modules use are re-exported here.
"""

from stripe_sf_sync.pipeline import RunSummary
from stripe_sf_sync.service.backfill import run_backfill
from stripe_sf_sync.service.discover import run_discover
from stripe_sf_sync.service.dlq import dlq_drop, dlq_list, run_dlq_retry
from stripe_sf_sync.service.doctor import run_doctor
from stripe_sf_sync.service.identity import run_state_rebind
from stripe_sf_sync.service.migrate import run_state_migrate
from stripe_sf_sync.service.reconcile import run_reconcile
from stripe_sf_sync.service.recorded import RecordedRun, recorded_run
from stripe_sf_sync.service.runtime import (
    BACKFILL_CHECKPOINT_KEY,
    SALESFORCE_CONTACT_EVERY_S,
    SALESFORCE_CONTACT_KEY,
    TASK_KEYS_ABOUT_KEY,
    Environment,
    Runtime,
    batch_settings,
    check_run_metrics,
    clients,
    exit_code_for,
    parse_since,
    task_keys_about_since,
)
from stripe_sf_sync.service.sandbox import run_demo, serve_sandbox, start_sandbox
from stripe_sf_sync.service.setup import run_setup_command
from stripe_sf_sync.service.status import status_report
from stripe_sf_sync.service.sync import apply_sync, prove_salesforce_contact, run_sync
from stripe_sf_sync.service.sync_all import PipelineRun, run_sync_all, worst_exit_code
from stripe_sf_sync.service.webhooks import serve_webhooks
from stripe_sf_sync.sources import READ_THROUGH_KEY

__all__ = [
    "BACKFILL_CHECKPOINT_KEY", "READ_THROUGH_KEY", "SALESFORCE_CONTACT_EVERY_S", "SALESFORCE_CONTACT_KEY",
    "TASK_KEYS_ABOUT_KEY", "Environment", "PipelineRun", "RecordedRun", "RunSummary", "Runtime", "apply_sync",
    "batch_settings", "check_run_metrics", "clients", "dlq_drop", "dlq_list", "exit_code_for", "parse_since",
    "prove_salesforce_contact", "recorded_run", "run_backfill", "run_demo", "run_discover", "run_dlq_retry",
    "run_doctor", "run_reconcile", "run_setup_command", "run_state_migrate", "run_state_rebind", "run_sync",
    "run_sync_all", "serve_sandbox", "serve_webhooks", "start_sandbox", "status_report", "task_keys_about_since",
    "worst_exit_code",
]
