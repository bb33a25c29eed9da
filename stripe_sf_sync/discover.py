"""discover-config: read the org's Opportunity record types and won stage, optionally write them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from stripe_sf_sync.config import load_yaml, new_business_record_type, parse_settings
from stripe_sf_sync.errors import ConfigError, FatalSyncError
from stripe_sf_sync.salesforce.gateway import SalesforceGateway
from stripe_sf_sync.salesforce_ids import to_18


@dataclass
class Discovery:
    """What the org says."""

    won_stages: list[tuple[str, str]]  # (API name, label) of each active won stage, by sort order
    record_types: dict[str, str]  # Name -> Id, active Opportunity record types
    default_record_type: str | None  # the integration user's default, by name
    chosen_record_type: str | None  # what new Opportunities will get
    unavailable_record_types: list[str] = field(default_factory=list)  # active, but not for this user
    configured_unavailable: str | None = None  # the configured record type, if this user may not use it

    @property
    def won_stage(self) -> str:
        """The won stage's API name: the value `StageName` takes (Salesforce Object Reference:
        OpportunityStage, `ApiName`)."""
        return self.won_stages[0][0]

    @property
    def won_stage_label(self) -> str:
        """The won stage's label, as people see it in Salesforce."""
        return self.won_stages[0][1]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"won_stage": self.won_stage, "won_stage_label": self.won_stage_label,
                "won_stages": [{"api_name": api, "label": label} for api, label in self.won_stages],
                "record_types": self.record_types, "unavailable_record_types": self.unavailable_record_types,
                "default_record_type": self.default_record_type, "opportunity_record_type": self.chosen_record_type,
                "configured_record_type_unavailable": self.configured_unavailable}


def won_stages(gw: SalesforceGateway) -> list[tuple[str, str]]:
    """(API name, label) of each active won and closed Opportunity stage, by sort order."""
    return [(str(r.get("ApiName") or r["MasterLabel"]), str(r["MasterLabel"])) for r in gw.query(
        "SELECT ApiName, MasterLabel, SortOrder FROM OpportunityStage WHERE IsWon = true AND IsClosed = true "
        "AND IsActive = true ORDER BY SortOrder")]


def discover(gw: SalesforceGateway, *, preferred: str | None = None) -> Discovery:
    """Query OpportunityStage and RecordType, and describe Opportunity for what this user may use.

    The won stage is read by `ApiName`, not `MasterLabel` as the integration guide's query has it:
    `StageName` takes the API name, and an admin may rename the label (Salesforce Object Reference:
    OpportunityStage, `ApiName` since API 36.0).
    """
    stages = won_stages(gw)
    if not stages:
        raise FatalSyncError("The org has no active Opportunity stage that is both won and closed.",
                             hint="Ask an admin to mark the won stage (Setup > Opportunity Stages).")
    types = {r["Name"]: to_18(r["Id"]) for r in gw.query(
        "SELECT Id, Name, DeveloperName FROM RecordType WHERE SobjectType = 'Opportunity' AND IsActive = true "
        "ORDER BY Name")}
    # An active record type the integration user's profile may not use fails every create with it
    # (Salesforce REST API: sObject Describe, `recordTypeInfos[].available`): never propose one.
    default = None
    available: set[str] = set()
    for info in gw.describe("Opportunity").get("recordTypeInfos", []):
        if info.get("master"):
            continue
        if info.get("available"):
            available.add(str(info.get("name")))
            if info.get("defaultRecordTypeMapping"):
                default = info.get("name")
    unavailable = [name for name in types if name not in available]
    usable = [name for name in types if name in available]
    chosen: str | None = None
    if preferred and preferred in usable:
        chosen = preferred
    else:
        chosen = new_business_record_type(usable)
        chosen = chosen or (default if default in usable else None)
        chosen = chosen or (usable[0] if len(usable) == 1 else None)  # the only one this user may use
    configured_unavailable = preferred if preferred and preferred in types and preferred not in available else None
    return Discovery(stages, types, default, chosen, unavailable, configured_unavailable)


def write_discovery(path: Path, found: Discovery, example: str) -> None:
    """Store the discovered values in sync.yaml, keeping every other key and the comments
    (ruamel.yaml round-trip). A missing file starts from sync.yaml.example."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    text = path.read_text(encoding="utf-8") if path.exists() else example
    try:
        doc = yaml.load(text) or {}
    except YAMLError:
        raise ConfigError([f"{path} is not valid YAML"], source="config",
                          hint="Fix it by hand first; discover-config only edits valid files.") from None
    sf = doc.get("salesforce")
    if sf is None:
        doc["salesforce"] = sf = {}
    sf["won_stage"] = found.won_stage
    sf["record_types"] = dict(found.record_types)
    if found.chosen_record_type and (sf.get("opportunity_record_type") not in found.record_types
                                     or sf.get("opportunity_record_type") == found.configured_unavailable):
        sf["opportunity_record_type"] = found.chosen_record_type
    buf = io.StringIO()
    yaml.dump(doc, buf)
    parse_settings(load_yaml(buf.getvalue()), source=str(path))  # never write a config that won't load
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)
