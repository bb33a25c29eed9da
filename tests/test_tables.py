"""Tables people can read: `dlq list`, the dry-run plan and `status` at 80 columns and piped keep every id whole
(on one line, so `grep evt_…` finds it), and every table has a --json form."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from rich.console import Console

from stripe_sf_sync.cli import app
from stripe_sf_sync.render import Column, print_records

from .conftest import since

NARROW = {"COLUMNS": "80"}




def whole(text: str, value: str) -> bool:
    """`value` appears on one line of `text`, uncut."""
    return any(value in line for line in text.splitlines())


def test_dlq_list_keeps_every_id_and_reason_whole_at_80_columns_piped(runner, config, cli_env, sc, org):
    # more dead letters than the scenario's one: three customers without an Account
    for name in ("initech", "hooli"):
        for acc in org.records("Account"):
            if acc.get("Stripe_Customer_ID__c") == sc.customers.get(name):
                org.delete("Account", acc["Id"])
    runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)], env=cli_env)
    letters = json.loads(runner.invoke(app, ["dlq", "list", "--config", str(config), "--json"], env=cli_env).stdout)
    assert len(letters) >= 2
    result = runner.invoke(app, ["dlq", "list", "--config", str(config)], env={**cli_env, **NARROW})
    assert result.exit_code == 0, result.output
    for dl in letters:
        assert whole(result.stdout, dl["event_id"]), result.stdout
        assert whole(result.stdout, dl["reason"]) and whole(result.stdout, dl["error_code"])
    assert f"{len(letters)} open dead letters" in result.stdout


def test_the_dry_run_plan_keeps_every_key_and_event_id_whole_at_80_columns_piped(runner, config, cli_env, sc):
    args = ["sync", "--config", str(config), "--since", since(sc), "--dry-run"]
    plan = json.loads(runner.invoke(app, [*args, "--json"], env=cli_env).stdout)["planned_writes"]
    assert plan
    result = runner.invoke(app, args, env={**cli_env, **NARROW})
    assert result.exit_code == 0, result.output
    for write in plan:
        assert whole(result.stdout, write["key"]), write["key"]
        for event in write["events"]:
            assert whole(result.stdout, event), event


def test_status_fits_80_columns_piped_with_every_id_whole(runner, config, cli_env, sc):
    runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)], env=cli_env)
    runner.invoke(app, ["dlq", "retry", "--all", "--config", str(config)], env=cli_env)
    runner.invoke(app, ["sync", "--config", str(config)], env=cli_env)
    report = json.loads(runner.invoke(app, ["status", "--config", str(config), "--json"], env=cli_env).stdout)
    result = runner.invoke(app, ["status", "--config", str(config)], env={**cli_env, **NARROW})
    assert result.exit_code == 0, result.output
    assert whole(result.stdout, report["cursor"]["event_id"])
    for run in report["runs"]:
        assert whole(result.stdout, time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(run["started_at"])))
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout


IDS = [Column("event", is_id=True), Column("code", is_id=True), Column("reason")]
ROWS = [("evt_1QxYzAbCdEfGhIjKlMnOpQrS", "NO_ACCOUNT", "No Salesforce Account has Stripe_Customer_ID__c = "
         "cus_Q1w2e3r4t5y6u7 [and more words than fit]"),
        ("evt_1QxYzAbCdEfGhIjKlMnOpQrT", "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access\nto this record")]


def render(*, width: int, terminal: bool) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=terminal, color_system=None, soft_wrap=True)
    print_records(console, "2 open dead letters", IDS, ROWS)
    return buf.getvalue()


def test_a_wide_terminal_gets_a_table_with_whole_ids_and_folded_text():
    out = render(width=100, terminal=True)
    assert "┃" in out or "│" in out
    for row in ROWS:
        assert whole(out, row[0]) and whole(out, row[1])
    assert "[and more" in out  # text, never taken for markup


@pytest.mark.parametrize(("width", "terminal"), [(60, True), (200, False), (30, True)])
def test_narrow_or_piped_output_is_one_block_of_lines_per_record(width, terminal):
    out = render(width=width, terminal=terminal)
    assert "│" not in out and "┃" not in out
    for row in ROWS:
        for value in row:
            assert whole(out, value.replace("\n", "\\n"))  # a line break in a value never splits it
    assert out.count("event:  evt_") == 2


def test_a_mapping_value_gets_one_line_per_entry_in_blocks():
    buf = io.StringIO()
    print_records(Console(file=buf, width=80, color_system=None, soft_wrap=True), "Planned writes: 1",
                  [Column("key", is_id=True), Column("fields")],
                  [("sub_1QxYzAbCdEfGhIjKlMnOpQrS", {"Description": "Amount: 149.00 USD\nAttempt: 1", "Amount": 149})])
    assert "key:    sub_1QxYzAbCdEfGhIjKlMnOpQrS\nfields:\n  Description: Amount: 149.00 USD\\nAttempt: 1\n" \
           "  Amount: 149\n" in buf.getvalue()


def test_dlq_list_at_120_columns_on_a_terminal_never_folds_an_id_inside_the_reason(runner, config, cli_env, sc,
                                                                                   org):
    """Issue 20 §5: at 120 columns the table folded the ids inside the reason column."""
    for name in ("initech", "hooli"):
        for acc in org.records("Account"):
            if acc.get("Stripe_Customer_ID__c") == sc.customers.get(name):
                org.delete("Account", acc["Id"])
    runner.invoke(app, ["sync", "--config", str(config), "--since", since(sc)], env=cli_env)
    letters = json.loads(runner.invoke(app, ["dlq", "list", "--config", str(config), "--json"], env=cli_env).stdout)
    ids_in_reasons = {word.strip(".,;:()'\"") for dl in letters for word in dl["reason"].split()
                      if re.match(r"['\"(]?(cus|sub|evt|in|pi|ch)_\w{6,}", word)}
    assert ids_in_reasons
    for columns in ("120", "160", "200"):
        result = runner.invoke(app, ["dlq", "list", "--config", str(config)],
                               env={**cli_env, "COLUMNS": columns, "TTY_COMPATIBLE": "1"})
        assert result.exit_code == 0, result.output
        for dl in letters:
            assert whole(result.stdout, dl["event_id"]) and whole(result.stdout, dl["error_code"])
        for word in ids_in_reasons:
            assert whole(result.stdout, word), (columns, word, result.stdout)


def test_a_folded_column_is_never_narrower_than_its_longest_word():
    rows = [("evt_1QxYzAbCdEfGhIjKlMnOpQrS", "NO_ACCOUNT", "No Salesforce Account has Stripe_Customer_ID__c = "
             "cus_Q1w2e3r4t5y6u7AbCdEf; create it, or set metadata.salesforce_account_id")]
    for width in range(40, 200, 7):
        buf = io.StringIO()
        print_records(Console(file=buf, width=width, force_terminal=True, color_system=None, soft_wrap=True),
                      "1 open dead letter", IDS, rows)
        for word in rows[0][2].split():
            assert whole(buf.getvalue(), word), (width, word, buf.getvalue())
