"""discover-config: read the org's Opportunity record types and won stage, optionally write them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from stripe_sf_sync.config import parse_settings
from stripe_sf_sync.errors import ConfigError, FatalSyncError
from stripe_sf_sync.salesforce_sink import SalesforceGateway
from stripe_sf_sync.sfid import to_18


@dataclass
class Discovery:
    """What the org says."""

    won_stages: list[str]
    record_types: dict[str, str]  # Name -> Id, active Opportunity record types
    default_record_type: str | None  # the integration user's default, by name
    chosen_record_type: str | None  # what new Opportunities will get

    @property
    def won_stage(self) -> str:
        """The won stage label to write (the first by sort order)."""
        return self.won_stages[0]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"won_stage": self.won_stage, "won_stages": self.won_stages, "record_types": self.record_types,
                "default_record_type": self.default_record_type, "opportunity_record_type": self.chosen_record_type}


def discover(gw: SalesforceGateway, *, preferred: str | None = None) -> Discovery:
    """Query RecordType and OpportunityStage (integration guide: record types, renamed won stage)."""
    stages = [r["MasterLabel"] for r in gw.query(
        "SELECT MasterLabel, SortOrder FROM OpportunityStage WHERE IsWon = true AND IsClosed = true "
        "AND IsActive = true ORDER BY SortOrder")]
    if not stages:
        raise FatalSyncError("The org has no active Opportunity stage that is both won and closed.",
                             hint="Ask an admin to mark the won stage (Setup > Opportunity Stages).")
    types = {r["Name"]: to_18(r["Id"]) for r in gw.query(
        "SELECT Id, Name, DeveloperName FROM RecordType WHERE SobjectType = 'Opportunity' AND IsActive = true "
        "ORDER BY Name")}
    default = None
    for info in gw.describe("Opportunity").get("recordTypeInfos", []):
        if info.get("defaultRecordTypeMapping") and not info.get("master"):
            default = info.get("name")
    chosen: str | None = None
    if preferred and preferred in types:
        chosen = preferred
    else:
        for name in types:
            if name.lower().replace("_", " ") == "new business":
                chosen = name
        chosen = chosen or (default if default in types else None)
    return Discovery(stages, types, default, chosen)


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
    if found.chosen_record_type and sf.get("opportunity_record_type") not in found.record_types:
        sf["opportunity_record_type"] = found.chosen_record_type
    buf = io.StringIO()
    yaml.dump(doc, buf)
    parse_settings(pyyaml.safe_load(buf.getvalue()), source=str(path))  # never write a config that won't load
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)
