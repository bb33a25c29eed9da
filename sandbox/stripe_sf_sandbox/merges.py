"""Record merges as a real org records them (SOAP API Developer Guide, "merge()";
developer.salesforce.com/docs/atlas.en-us.212.0.api.meta/api/sforce_api_calls_merge.htm):

- up to three records of one type (Account, Contact) are merged into the master record;
- the other records (the "victims") are deleted, and their related records get the master as new parent;
- a deleted victim keeps `MasterRecordId` naming the master, and only `queryAll` sees it, e.g.
  `SELECT Id FROM Contact WHERE IsDeleted = true AND MasterRecordId != null` (same page).

An admin merges in the UI or through the SOAP API (REST has no merge resource), so the stand-in offers
`SalesforceOrg.merge(...)` as a seeding helper, like `insert` and `delete`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import sfids

if TYPE_CHECKING:
    from .salesforce_server import SalesforceOrg

MERGEABLE = frozenset({"Account", "Contact"})
MAX_RECORDS = 3  # "Combines up to 3 records of the same type into 1 record" (merge())

# Children re-parented by a merge: (child sObject, its reference fields that can name the merged record).
_CHILDREN: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "Account": [("Contact", ("AccountId",)), ("Opportunity", ("AccountId",)), ("Task", ("WhatId", "AccountId"))],
    "Contact": [("Task", ("WhoId",))],
}


def merge(org: SalesforceOrg, sobject: str, master_id: str, victim_ids: list[str]) -> list[str]:
    """Merge `victim_ids` into `master_id` (the caller holds the org's lock); the related records moved.
    Raises ValueError for what merge() refuses: another type, a missing or deleted record, more than three."""
    if sobject not in MERGEABLE:
        raise ValueError(f"merge() does not support {sobject}")
    if not victim_ids or len(victim_ids) + 1 > MAX_RECORDS:
        raise ValueError("merge() combines two or three records")
    master = _live_id(org, sobject, master_id)
    victims = [_live_id(org, sobject, v) for v in victim_ids]
    if master in victims or len(set(victims)) != len(victims):
        raise ValueError("merge() needs distinct records")
    now = _stamp(org)
    undo: list[tuple[Any, ...]] = []
    moved: list[str] = []
    for child, ref_fields in _CHILDREN.get(sobject, []):
        for rec in list(org._data.get(child, {}).values()):
            changed = {f: master for f in ref_fields if rec.get(f) in victims}
            if changed:
                org._put(child, dict(rec, **changed, LastModifiedDate=now, SystemModstamp=now), undo)
                moved.append(rec["Id"])
    for victim in victims:
        org._remove(sobject, victim, undo)  # no cascade: the children were moved to the master above
        org._deleted[victim][1].update(MasterRecordId=master, LastModifiedDate=now, SystemModstamp=now)
    return moved


def _live_id(org: SalesforceOrg, sobject: str, raw: str) -> str:
    rid = sfids.normalize_id(raw)
    if rid is None:
        raise ValueError(f"malformed id {raw}")
    if rid in org._deleted:
        raise ValueError(f"ENTITY_IS_DELETED: {rid}")
    if rid not in org._data.get(sobject, {}):
        raise ValueError(f"no {sobject} {rid}")
    return rid


def _stamp(org: SalesforceOrg) -> str:
    from .salesforce_server import _now_iso

    return _now_iso(org.clock())
