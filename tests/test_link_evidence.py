"""`stripe-sf link`'s matching (link/evidence.py) and its proposals file (link/csvfile.py): pure, no I/O."""

from __future__ import annotations

import io

import pytest

from stripe_sf_sync.link.csvfile import COLUMNS, LinkFileError, parse_links, write_proposals
from stripe_sf_sync.link.evidence import (
    AccountCandidate,
    Candidates,
    ContactCandidate,
    Customer,
    email_domain,
    is_free_mail,
    propose,
    website_domain,
)
from stripe_sf_sync.salesforce_ids import to_18

ACME = to_18("001000000000001")
ACME_2 = to_18("001000000000002")
GLOBEX = to_18("001000000000003")


def org(*accounts: AccountCandidate, contacts: tuple[ContactCandidate, ...] = ()) -> Candidates:
    found = Candidates()
    for account in accounts:
        found.add_account(account)
    for contact in contacts:
        found.add_contact(contact)
    return found


def test_a_contact_email_gives_its_account_whatever_the_case() -> None:
    found = org(AccountCandidate(ACME, "Acme"),
                contacts=(ContactCandidate("003A", "Bob.Smith@Acme.com", ACME),))
    p = propose(Customer("cus_1", "bob.smith@acme.COM", "Someone Else"), found)
    assert (p.status, p.account_id, p.account_name, p.evidence, p.confidence) == (
        "matched", ACME, "Acme", "contact_email", "high")
    assert "003A" in p.detail


def test_the_strongest_evidence_wins_over_weaker_ones() -> None:
    found = org(AccountCandidate(ACME, "Acme"), AccountCandidate(GLOBEX, "Bob", "globex.com"),
                contacts=(ContactCandidate("003A", "bob@globex.com", ACME),))
    p = propose(Customer("cus_1", "bob@globex.com", "Bob"), found)
    assert (p.account_id, p.evidence) == (ACME, "contact_email")


def test_a_website_domain_matches_with_or_without_scheme_and_www() -> None:
    found = org(AccountCandidate(ACME, "Acme", "https://www.ACME.com/about"))
    p = propose(Customer("cus_1", "ceo@acme.com"), found)
    assert (p.status, p.account_id, p.evidence, p.confidence) == ("matched", ACME, "website_domain", "medium")
    assert [website_domain(w) for w in ("acme.com", "http://acme.com:8080/x", "www.acme.com", "", "localhost")] == [
        "acme.com", "acme.com", "acme.com", None, None]


@pytest.mark.parametrize("domain", ["gmail.com", "googlemail.com", "yahoo.co.uk", "outlook.com", "gmx.de"])
def test_a_free_mail_domain_never_counts(domain: str) -> None:
    assert is_free_mail(domain)
    found = org(AccountCandidate(ACME, "Gmail fans", f"https://{domain}"))
    assert propose(Customer("cus_1", f"someone@{domain}"), found).status == "none"


def test_a_company_domain_is_not_free_mail() -> None:
    assert not is_free_mail("acme.com") and not is_free_mail(None)
    assert email_domain("A@Acme.COM") == "acme.com" and email_domain("not-an-address") is None


def test_an_account_name_matches_ignoring_case_and_spacing() -> None:
    found = org(AccountCandidate(ACME, "Acme  Corp"))
    p = propose(Customer("cus_1", "x@gmail.com", "acme corp"), found)
    assert (p.status, p.account_id, p.evidence, p.confidence) == ("matched", ACME, "account_name", "low")


def test_two_candidates_of_the_same_strength_are_ambiguous_and_not_proposed() -> None:
    found = org(AccountCandidate(ACME, "Acme"), AccountCandidate(ACME_2, "Acme"))
    p = propose(Customer("cus_1", None, "Acme"), found)
    assert (p.status, p.account_id, p.confidence) == ("ambiguous", None, "")
    assert set(p.candidates) == {ACME, ACME_2}


def test_a_weaker_level_never_breaks_a_tie() -> None:
    found = org(AccountCandidate(ACME, "Acme"), AccountCandidate(GLOBEX, "Globex"),
                contacts=(ContactCandidate("003A", "bob@acme.com", ACME), ContactCandidate("003B", "bob@acme.com",
                                                                                           GLOBEX)))
    assert propose(Customer("cus_1", "bob@acme.com", "Acme"), found).status == "ambiguous"


def test_two_contacts_of_one_account_are_one_candidate() -> None:
    found = org(AccountCandidate(ACME, "Acme"), contacts=(ContactCandidate("003A", "bob@acme.com", ACME),
                                                          ContactCandidate("003B", "BOB@acme.com", ACME)))
    assert propose(Customer("cus_1", "bob@acme.com"), found).status == "matched"


def test_an_account_linked_to_another_customer_is_not_proposed() -> None:
    found = org(AccountCandidate(ACME, "Acme", customer_id="cus_other"))
    p = propose(Customer("cus_1", None, "Acme"), found)
    assert (p.status, p.account_id, p.candidates) == ("taken", None, (ACME,))
    assert "cus_other" in p.detail


def test_no_evidence_proposes_nothing() -> None:
    assert propose(Customer("cus_1"), org(AccountCandidate(ACME, "Acme"))).status == "none"


# --- the proposals file -------------------------------------------------------------------------------


def test_the_csv_round_trips_the_links_of_the_proposals() -> None:
    found = org(AccountCandidate(ACME, "Acme, Inc."), AccountCandidate(GLOBEX, "=HYPERLINK(\"x\")"))
    proposals = [propose(Customer("cus_1", "a@acme.com", "Acme, Inc."), found),
                 propose(Customer("cus_2", None, "=HYPERLINK(\"x\")"), found),
                 propose(Customer("cus_3", "z@zeta.io", "Zeta"), found)]
    out = io.StringIO()
    write_proposals(out, proposals)
    text = out.getvalue()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert "'=HYPERLINK" in text  # a spreadsheet shows it, never runs it
    links = parse_links(io.StringIO(text))
    assert [(link.customer_id, link.account_id, link.line) for link in links] == [("cus_1", ACME, 2),
                                                                                   ("cus_2", GLOBEX, 3)]


def test_a_reviewed_file_takes_15_character_ids_and_skips_cleared_rows() -> None:
    text = "customer_id,account_id\ncus_1,001000000000001\ncus_2,\n\n"
    assert [(link.customer_id, link.account_id) for link in parse_links(io.StringIO(text))] == [("cus_1", ACME)]


def test_malformed_rows_are_refused_all_at_once_with_their_lines() -> None:
    text = ("customer_id,email,account_id\n"
            "cus_1,a@x.com,001000000000001\n"
            "bob,b@x.com,001000000000002\n"
            "cus_3,c@x.com,003000000000001\n"
            "cus_1,d@x.com,\n"
            "cus_5,e@x.com,001000000000001XYZ\n"
            "cus_6,f@x.com,001000000000001\n")
    with pytest.raises(LinkFileError) as err:
        parse_links(io.StringIO(text), "links.csv")
    assert err.value.problems == [
        "line 3: customer_id 'bob' is not a Stripe customer id (cus_...)",
        "line 4: account_id '003000000000001' is not a Salesforce Account Id (15 or 18 characters, starting 001)",
        "line 5: customer cus_1 is already on line 2",
        "line 6: account_id '001000000000001XYZ' is not a Salesforce Account Id (15 or 18 characters, starting 001)",
        f"line 7: Account {ACME} is also given to cus_1 on line 2 (an Account holds one customer id)",
    ]
    assert str(err.value).startswith("links.csv: 5 problems:")


def test_a_file_without_the_needed_columns_is_refused() -> None:
    with pytest.raises(LinkFileError, match="line 1: no account_id column"):
        parse_links(io.StringIO("customer_id,email\ncus_1,a@x.com\n"))
    with pytest.raises(LinkFileError, match="empty"):
        parse_links(io.StringIO(""))
