"""Duplicate rules as a real org applies them (Duplicate Management): a rule of an sObject blocks creating a
record whose matching fields equal an existing record's, and the save fails with DUPLICATES_DETECTED carrying a
DuplicateResult that names the rule and the records it matched.

The shape (SOAP API Developer Guide / Object Reference: DuplicateError, DuplicateResult, MatchResult,
MatchRecord; developer.salesforce.com/docs/platform/api/guide/sforce-api-objects-duplicateerror.html and
sforce-api-objects-duplicateresult.html): the error has `statusCode` DUPLICATES_DETECTED, `message` (the rule's
error message), `fields`, and `duplicateResult` with `allowSave`, `duplicateRule`, `duplicateRuleEntityType`,
`errorMessage` and `matchResults`: one MatchResult per matching rule (`entityType`, `matchEngine`, `rule`,
`size`, `success`, `errors`, `matchRecords`: each a MatchRecord with `matchConfidence`, `fieldDiffs`,
`additionalInformation` and the matched `record` with its Id). A blocking rule (`allowSave` false) never saves;
stripe-sf never asks to bypass one.

Matching here is exact (case and surrounding spaces ignored), where the standard matching rules are fuzzy: what
the tests need is a rule that fires, not Salesforce's matching engine. Records seeded with `org.insert` are not
checked (an admin's import), only creates through the APIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .salesforce_server import SalesforceOrg

DUPLICATES_DETECTED = "DUPLICATES_DETECTED"


@dataclass(frozen=True)
class DuplicateRule:
    """A blocking duplicate rule: a new `sobject` record whose `fields` all equal an existing record's is refused."""

    sobject: str
    fields: tuple[str, ...]
    name: str = ""
    message: str = "Use one of these records?"

    @property
    def rule_name(self) -> str:
        """Its developer name (`Standard_Account_Duplicate_Rule` for the standard Account rule)."""
        return self.name or f"Standard_{self.sobject}_Duplicate_Rule"


def _norm(value: Any) -> str:
    return str(value).strip().casefold()


def duplicate_errors(org: SalesforceOrg, sobject: str, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The DUPLICATES_DETECTED error a new `rec` meets under the org's rules (an empty list: none)."""
    for rule in org.duplicate_rules:
        if rule.sobject != sobject or any(rec.get(f) in (None, "") for f in rule.fields):
            continue
        wanted = [_norm(rec[f]) for f in rule.fields]
        matched = [r["Id"] for r in org.records(sobject)
                   if r["Id"] != rec.get("Id") and [_norm(r.get(f) or "") for f in rule.fields] == wanted]
        if not matched:
            continue
        records = [{"additionalInformation": [], "fieldDiffs": [], "matchConfidence": 100.0,
                    "record": {"attributes": {"type": sobject, "url": f"/services/data/v62.0/sobjects/{sobject}/{rid}"},
                               "Id": rid}} for rid in matched]
        result = {"allowSave": False, "duplicateRule": rule.rule_name, "duplicateRuleEntityType": sobject,
                  "errorMessage": rule.message,
                  "matchResults": [{"entityType": sobject, "errors": [], "matchEngine": "ExactMatchEngine",
                                    "matchRecords": records, "rule": f"Standard_{sobject}_Match_Rule_v1_0",
                                    "size": len(records), "success": True}]}
        return [{"statusCode": DUPLICATES_DETECTED, "message": rule.message, "fields": [],
                 "duplicateResult": result}]
    return []
