"""What `doctor` says of optional creation (identity.create_accounts / create_contacts, docs/link.md): that it is
on, and whether the integration user may create what it would create (the describe's sObject-level
`createable`, Object Reference: DescribeSObjectResult), and whether the default owner is an active User. Pure:
it reads describes and a query page the doctor already made in its one Composite call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from simple_salesforce.format import format_soql

from stripe_sf_sync.config import IdentitySettings


@dataclass(frozen=True)
class CreationFinding:
    """One doctor line about creation."""

    status: Literal["ok", "warning", "error"]
    message: str
    fix: str = ""
    subject: str | None = None


def owner_query(identity: IdentitySettings) -> str | None:
    """The SOQL that reads the default owner (its Id is validated by config.py), or None without one."""
    if not identity.create_accounts or not identity.default_owner_id:
        return None
    return str(format_soql("SELECT Id, Name, IsActive FROM User WHERE Id = {}", identity.default_owner_id))


def creation_findings(identity: IdentitySettings, described: Mapping[str, Mapping[str, Any]],
                      owner_page: Mapping[str, Any] | None) -> list[CreationFinding]:
    """The creation lines: none when creation is off."""
    if not identity.create_accounts:
        return []
    wanted = ["Account", *(["Contact"] if identity.create_contacts else [])]
    refused = [s for s in wanted if described.get(s, {}).get("createable") is not True]
    out: list[CreationFinding] = []
    what = " and Contacts" if identity.create_contacts else ""
    if refused:
        out.append(CreationFinding(
            "error", f"identity.create_accounts is on, but the integration user may not create {' or '.join(refused)}"
            " records: customers with no Account will be dead letters",
            f"give the integration user Create on {' and '.join(refused)} (its permission set), or set "
            "identity.create_accounts: false", refused[0]))
    else:
        out.append(CreationFinding("ok", f"on: a customer with no Account gets one{what} (the integration user "
                                   f"may create {' and '.join(wanted)} records)", subject="identity"))
    if identity.default_owner_id:
        records = (owner_page or {}).get("records") or []
        first = records[0] if records and isinstance(records[0], Mapping) else None
        if first is None or first.get("IsActive") is not True:
            out.append(CreationFinding(
                "error", f"identity.default_owner_id {identity.default_owner_id} is not an active User of this org",
                "set it to an active User's Id (Setup > Users), or remove it to let the integration user own "
                "the Accounts it creates", "identity.default_owner_id"))
        else:
            out.append(CreationFinding("ok", f"created Accounts are owned by {first.get('Name')}",
                                       subject="identity.default_owner_id"))
    return out
