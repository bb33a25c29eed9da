"""A local stand-in for the Salesforce REST API, served over real HTTPS on 127.0.0.1.

Used by ``stripe-sf demo`` and by the test suite. It enforces what a real org enforces (field
types, lengths, restricted picklists, required fields, Id checksums and key prefixes, reference
integrity, unique external ids, record types, API limits, sessions) so that tests run against it
prove something. Clients talk to it with the real ``simple_salesforce`` library.
"""

from __future__ import annotations

import base64
import binascii
import copy
import csv
import io
import itertools
import json
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

import requests
import trustme

from . import sfids, soql
from .faults import SalesforceFaultPlan

__all__ = ["FieldDef", "SalesforceFaultPlan", "SalesforceOrg", "SalesforceSandbox", "ValidationRule"]

QUERY_BATCH_SIZE = 2000
MAX_URI_BYTES = 16_384  # real orgs: longer URI -> 414, longer URI + headers -> 431
COLLECTION_LIMIT = 200
BULK_CHUNK_SIZE = 200
LATEST_VERSION = "62.0"

_RELEASES = {
    "55.0": "Summer '22", "56.0": "Winter '23", "57.0": "Spring '23", "58.0": "Summer '23",
    "59.0": "Winter '24", "60.0": "Spring '24", "61.0": "Summer '24", "62.0": "Winter '25",
    "63.0": "Spring '25",
}  # fmt: skip

# System fields org.insert() may set explicitly, so tests can seed back-dated or fixed-Id records.
_SEEDABLE = {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "CreatedById", "LastModifiedById"}
# Setup objects: readable over the API but not writable (real orgs say INVALID_TYPE_FOR_OPERATION).
_SETUP_OBJECTS = {"User", "RecordType", "OpportunityStage", "Organization"}
_NUMBER_TYPES = {"currency", "double", "percent", "int"}
_TEXT_TYPES = {"string", "textarea", "picklist", "email", "phone", "url"}
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?$"
)
_VERSION_RE = re.compile(r"^v(\d{2,3}\.\d)$")
# What Salesforce answers an upsert on a non-Unique External ID without "View All Data".
_NON_UNIQUE_UPSERT = "Upsert requires view all data on a non-unique custom index"
_ROLLED_BACK = (
    "Record rolled back because not all records were valid and the request was using AllOrNone header"
)


# ----------------------------------------------------------------------------------------------
# Schema


@dataclass
class FieldDef:
    """One field of an sObject, with the constraints a real org enforces."""

    name: str
    type: str  # id, string, textarea, picklist, reference, date, datetime, currency, double, boolean, email
    length: int | None = None
    required: bool = False
    external_id: bool = False
    unique: bool = False
    picklist: list[str] | None = None
    # Picklist value -> label where they differ: the API takes and returns the value (sObject Describe).
    picklist_labels: dict[str, str] | None = None
    restricted: bool = False
    reference_to: list[str] | None = None
    precision: int | None = None
    scale: int | None = None
    createable: bool = True
    updateable: bool = True
    # Salesforce unique/external-id text is case-insensitive unless the admin ticks "case sensitive".
    case_sensitive: bool = False
    label: str | None = None
    # Field-level security: False while no permission set grants the API user Read (metadata.py), and then the
    # field is absent from describe and unknown to SOQL and DML, as in a real org.
    visible: bool = True

    @property
    def display_label(self) -> str:
        """Human label used in error messages ("Account ID", "Close Date", "CSM")."""
        if self.label:
            return self.label
        base = self.name[:-3] if self.name.endswith("__c") else self.name
        if self.type == "reference" and base.endswith("Id"):
            base = base[:-2] + " ID"
        return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base).replace("_", " ")

    @property
    def relationship_name(self) -> str | None:
        """Name used to traverse this lookup in SOQL and JSON (AccountId -> Account, CSM__c -> CSM__r)."""
        if self.type != "reference":
            return None
        if self.name.endswith("__c"):
            return self.name[:-3] + "__r"
        if self.name.endswith("Id"):
            return self.name[:-2]
        return None

    @property
    def long_text(self) -> bool:
        """Long text areas cannot be filtered or sorted in SOQL."""
        return self.type == "textarea" and (self.length or 0) > 255


def _system_fields() -> list[FieldDef]:
    ro: dict[str, Any] = {"createable": False, "updateable": False}
    return [
        FieldDef("Id", "id", length=18, **ro),
        FieldDef("IsDeleted", "boolean", **ro),
        FieldDef("CreatedDate", "datetime", **ro),
        FieldDef("CreatedById", "reference", reference_to=["User"], **ro),
        FieldDef("LastModifiedDate", "datetime", **ro),
        FieldDef("LastModifiedById", "reference", reference_to=["User"], **ro),
        FieldDef("SystemModstamp", "datetime", **ro),
    ]


@dataclass(frozen=True)
class ValidationRule:
    """An active validation rule that refuses a record whose `field` is empty: on create only (`ISNEW() &&
    ISBLANK(field)`, Salesforce Help "ISNEW") or on every save. Refused, a write fails with
    FIELD_CUSTOM_VALIDATION_EXCEPTION and the rule's message, naming its errorDisplayField (Metadata API:
    ValidationRule, `errorMessage`, `errorDisplayField`)."""

    name: str
    sobject: str
    field: str
    message: str
    on_create: bool = True


def _fields(*defs: FieldDef) -> dict[str, FieldDef]:
    return {d.name: d for d in (*_system_fields(), *defs)}


def _ext(name: str) -> FieldDef:
    return FieldDef(name, "string", length=255, external_id=True, unique=True)


def _owner() -> FieldDef:
    return FieldDef("OwnerId", "reference", reference_to=["User"], required=True)


# What an admin made of Task.Stripe_Event_ID__c: External ID and Unique, External ID only, Unique only, or a
# plain Text field. Whether an Activity custom field can be marked Unique is not documented clearly,
# so stripe-sf must work with every variant.
TaskKeyKind = Literal["external_unique", "external", "unique", "text"]


def _task_key_field(kind: TaskKeyKind) -> FieldDef:
    return FieldDef(
        "Stripe_Event_ID__c",
        "string",
        length=255,
        external_id=kind in ("external_unique", "external"),
        unique=kind in ("external_unique", "unique"),
    )


def _default_schema(
    task_event_id_field: bool, csm_field: str | None, task_event_id_kind: TaskKeyKind = "external_unique"
) -> dict[str, dict[str, FieldDef]]:
    account = _fields(
        FieldDef("Name", "string", length=255, required=True),
        _owner(),
        FieldDef("Description", "textarea", length=32000),
        _ext("Stripe_Customer_ID__c"),
        # Standard fields `stripe-sf link` reads: a company's web address, and the survivor a merge names.
        FieldDef("Website", "url", length=255),
        FieldDef("MasterRecordId", "reference", reference_to=["Account"], createable=False, updateable=False),
        FieldDef(
            "Subscription_Status__c",
            "picklist",
            length=255,
            restricted=True,
            picklist=[
                "active",
                "trialing",
                "past_due",
                "canceled",
                "unpaid",
                "incomplete",
                "incomplete_expired",
                "paused",
            ],
        ),
    )
    if csm_field:
        account[csm_field] = FieldDef(csm_field, "reference", reference_to=["User"])
    opportunity = _fields(
        FieldDef("Name", "string", length=120, required=True),
        FieldDef("AccountId", "reference", reference_to=["Account"]),
        FieldDef(
            "StageName", "picklist", length=255, required=True, restricted=True, picklist=[], label="Stage"
        ),
        FieldDef("CloseDate", "date", required=True),
        FieldDef("Amount", "currency", precision=18, scale=2),
        FieldDef("RecordTypeId", "reference", reference_to=["RecordType"], label="Record Type ID"),
        _owner(),
        FieldDef("IsWon", "boolean", createable=False, updateable=False),
        FieldDef("IsClosed", "boolean", createable=False, updateable=False),
        FieldDef("Description", "textarea", length=32000),
        # Standard picklists every org has, not restricted (the API takes any value): what validation rules of
        # real orgs most often require on create.
        FieldDef("Type", "picklist", length=255, picklist=["New Customer", "New Business", "Existing Business"]),
        FieldDef("LeadSource", "picklist", length=255, picklist=["Web", "Phone Inquiry", "Partner Referral",
                                                                 "Purchased List", "Stripe", "Other"]),
        _ext("Stripe_Subscription_ID__c"),
        _ext("Stripe_Payment_Intent_ID__c"),
        FieldDef("Stripe_Customer_ID__c", "string", length=255),
        FieldDef("MRR__c", "currency", precision=16, scale=2),
        FieldDef("ARR__c", "currency", precision=16, scale=2),
    )
    task = _fields(
        FieldDef("Subject", "string", length=255),
        FieldDef("Description", "textarea", length=32000),
        FieldDef("WhatId", "reference", reference_to=["Account", "Opportunity"]),
        FieldDef("WhoId", "reference", reference_to=["Contact"]),
        _owner(),
        FieldDef("AccountId", "reference", reference_to=["Account"], createable=False, updateable=False),
        FieldDef(
            "Status",
            "picklist",
            length=255,
            required=True,
            restricted=True,
            picklist=["Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"],
        ),
        FieldDef(
            "Priority",
            "picklist",
            length=255,
            required=True,
            restricted=True,
            picklist=["High", "Normal", "Low"],
        ),
        FieldDef("ActivityDate", "date", label="Due Date Only"),
        FieldDef("Type", "picklist", length=255, picklist=["Call", "Email", "Other"]),
        FieldDef("IsArchived", "boolean", createable=False, updateable=False),
    )
    if task_event_id_field:
        task["Stripe_Event_ID__c"] = _task_key_field(task_event_id_kind)
    contact = _fields(
        FieldDef("FirstName", "string", length=40),
        FieldDef("LastName", "string", length=80, required=True),
        FieldDef("AccountId", "reference", reference_to=["Account"]),
        FieldDef("Email", "email", length=80),
        FieldDef("MasterRecordId", "reference", reference_to=["Contact"], createable=False, updateable=False),
        _owner(),
    )
    user = _fields(
        FieldDef("Name", "string", length=121, required=True, label="Full Name"),
        FieldDef("Username", "string", length=80, required=True, unique=True),
        FieldDef("Email", "email", length=128, required=True),
        FieldDef("IsActive", "boolean", label="Active"),
    )
    record_type = _fields(
        FieldDef("Name", "string", length=80, required=True),
        FieldDef("DeveloperName", "string", length=80, required=True),
        FieldDef("SobjectType", "string", length=40, required=True),
        FieldDef("IsActive", "boolean"),
    )
    stage = _fields(
        FieldDef("MasterLabel", "string", length=255, required=True),
        FieldDef("ApiName", "string", length=255),
        FieldDef("IsWon", "boolean"),
        FieldDef("IsClosed", "boolean"),
        FieldDef("IsActive", "boolean"),
        FieldDef("SortOrder", "double", precision=9, scale=0),
    )
    # The org's one Organization record (Object Reference: Organization). DefaultCurrencyIsoCode is the
    # org's currency; in a single-currency org every amount is read in it.
    organization = _fields(
        FieldDef("Name", "string", length=80, required=True),
        FieldDef("IsSandbox", "boolean"),
        FieldDef("OrganizationType", "picklist", length=40, picklist=["Enterprise Edition", "Developer Edition"]),
        FieldDef("DefaultCurrencyIsoCode", "picklist", length=3, label="Currency Locale"),
    )
    return {
        "Organization": organization,
        "User": user,
        "RecordType": record_type,
        "OpportunityStage": stage,
        "Account": account,
        "Contact": contact,
        "Opportunity": opportunity,
        "Task": task,
    }


# ----------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    """A whole-request failure: HTTP status plus the JSON body a real org would send."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def _api_error(status: int, code: str, message: str, fields: list[str] | None = None) -> ApiError:
    item: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        item["fields"] = fields
    return ApiError(status, [item])


def _err(code: str, message: str, fields: Iterable[str] = ()) -> dict[str, Any]:
    """A per-record error in the collections/SaveResult shape (key ``statusCode``)."""
    return {"statusCode": code, "message": message, "fields": list(fields)}


class _RecordError(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "record error")
        self.errors = errors


def _fail(code: str, message: str, fields: Iterable[str] = ()) -> _RecordError:
    return _RecordError([_err(code, message, fields)])


# ----------------------------------------------------------------------------------------------
# Write operations


@dataclass
class _WriteOp:
    kind: str  # create, update, upsert, delete
    sobject: str
    fields: dict[str, Any] = field(default_factory=dict)
    refs: dict[str, tuple[str | None, str, Any]] = field(default_factory=dict)
    record_id: Any = None
    ext_field: str | None = None
    ext_value: Any = None
    ext_from_url: bool = False
    seeding: bool = False
    pre_errors: list[dict[str, Any]] = field(default_factory=list)
    user: str | None = None  # who makes the change (LastModifiedById); the integration user by default


@dataclass
class _Outcome:
    id: str | None
    success: bool
    errors: list[dict[str, Any]]
    created: bool | None = None

    def as_json(self, with_created: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "success": self.success, "errors": self.errors}
        if with_created:
            out["created"] = bool(self.created) if self.success else False
        return out


@dataclass
class _IngestJob:
    id: str
    object: str
    operation: str
    external_id_field: str | None
    line_ending: str
    column_delimiter: str
    api_version: str
    created_by: str
    created_date: str
    state: str = "Open"
    content: str | None = None
    header: list[str] = field(default_factory=list)
    results: list[tuple[list[str], _Outcome]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    error_message: str | None = None
    modstamp: str = ""
    ready_at: datetime | None = None  # closed, and processed once this time has come (bulk_processing_seconds)

    def info(self) -> dict[str, Any]:
        failed = sum(1 for _, o in self.results if not o.success)
        return {
            "id": self.id,
            "operation": self.operation,
            "object": self.object,
            "createdById": self.created_by,
            "createdDate": self.created_date,
            "systemModstamp": self.modstamp or self.created_date,
            "state": self.state,
            "externalIdFieldName": self.external_id_field,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "jobType": "V2Ingest",
            "contentUrl": f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches",
            "lineEnding": self.line_ending,
            "columnDelimiter": self.column_delimiter,
            "numberRecordsProcessed": len(self.results),
            "numberRecordsFailed": failed,
            "retries": 0,
            "totalProcessingTime": 0,
            "apiActiveProcessingTime": 0,
            "apexProcessingTime": 0,
            "errorMessage": self.error_message,
        }


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
_BULK_OPERATIONS = {"insert", "update", "upsert", "delete", "hardDelete"}


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """JSON-encode a response body (Decimals become numbers)."""
    return json.dumps(value, default=_json_default, separators=(",", ":")).encode()


def _now_iso(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


# ----------------------------------------------------------------------------------------------
# The org


class SalesforceOrg:
    """In-memory org: schema + records + API usage. Thread-safe (a lock around every mutation)."""

    def __init__(
        self,
        *,
        won_stage: str = "Closed Won",
        won_stage_label: str | None = None,
        record_types: dict[str, str] | None = None,
        unavailable_record_types: Iterable[str] = (),
        require_record_type: bool = False,
        task_event_id_field: bool = True,
        task_event_id_kind: TaskKeyKind = "external_unique",
        view_all_data: bool = False,
        csm_field: str | None = "CSM__c",
        daily_api_limit: int = 100_000,
        currencies: Sequence[str] | None = None,
        default_currency: str = "USD",
        no_create: Iterable[str] = (),
        no_edit: Iterable[str] = (),
        stripe_sf_fields: bool = True,
        modify_metadata: bool = True,
        org_id: str | None = None,
        is_sandbox: bool = True,
        validation_rules: Sequence[ValidationRule] = (),
        required_fields: Iterable[str] = (),
    ) -> None:
        self._lock = threading.RLock()
        self._ids = sfids.IdFactory()
        self.schema: dict[str, dict[str, FieldDef]] = _default_schema(
            task_event_id_field, csm_field, task_event_id_kind
        )
        # The integration user's "View All Data" permission: an upsert on a non-Unique External ID needs it
        # (Salesforce REST API: Insert or Update (Upsert) a Record Using an External ID).
        self.view_all_data = view_all_data
        # A multi-currency org (Salesforce Help: multiple currencies): records gain CurrencyIsoCode, a
        # restricted picklist of the org's active currencies, the first being the corporate currency (the
        # default on create).
        # A single-currency org (None) has no such field, and a write naming it fails with INVALID_FIELD.
        self.currencies: list[str] | None = [c.upper() for c in currencies] if currencies is not None else None
        if self.currencies is not None:
            if not self.currencies:
                raise ValueError("a multi-currency org needs at least its corporate currency")
            for sobject in ("Account", "Opportunity"):
                self.schema[sobject]["CurrencyIsoCode"] = FieldDef(
                    "CurrencyIsoCode", "picklist", length=3, restricted=True, picklist=list(self.currencies),
                    label=f"{sobject} Currency",
                )
        # The org's active validation rules, and its fields an admin made required ("Object.Field"; a field the
        # schema lacks is added as a required Text(80) custom field): a create without them fails.
        self.validation_rules: list[ValidationRule] = list(validation_rules)
        for qualified in required_fields:
            self.require_field(qualified)
        self.key_prefixes: dict[str, str] = dict(sfids.KEY_PREFIXES)
        # Deploys, permission sets and field-level security (metadata.py). stripe_sf_fields=False: an org without
        # stripe-sf's custom fields, for `stripe-sf setup` to create; modify_metadata=False: an API user without
        # "Modify Metadata", whom every deploy refuses.
        from . import metadata

        self.metadata = metadata.install(self, stripe_sf_fields=stripe_sf_fields, modify_metadata=modify_metadata)
        self.won_stage = won_stage  # the stage's API name: what StageName takes (Object Reference: OpportunityStage)
        # Record types (by Name or DeveloperName) the integration user's profile may not use: active in
        # the org, but `available: false` in describe, and every create with one fails (sObject Describe).
        self.unavailable_record_types = frozenset(unavailable_record_types)
        # sObjects the integration user's profile may not create, or not edit: describe says so
        # (`createable`/`updateable` of the sObject), and such a write fails with
        # CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY "entity type cannot be inserted: Task".
        self.no_create = set(no_create)
        self.no_edit = set(no_edit)
        self.require_record_type = require_record_type
        self.csm_field = csm_field
        self.daily_api_limit = daily_api_limit
        self.api_used = 0
        # Bulk API 2.0 processes a closed job asynchronously: it stays InProgress until done, and clients poll
        # its state (Open -> UploadComplete -> InProgress -> JobComplete; api-facts.md "Bulk 2.0 ingest",
        # SF-b2lim). 0: done at once when closed; more: jobs report InProgress for that many seconds.
        self.bulk_processing_seconds = 0.0
        # Each org its own Id (Organization.Id; a refreshed sandbox is a new org with a new Id), unless given.
        self.org_id = org_id or sfids.IdFactory(start=62**5 * 11 + secrets.randbelow(62**8)).new("00D")
        self.duplicate_rules: list[Any] = []  # duplicates.DuplicateRule: blocking rules checked on API creates
        self.oauth_clients: dict[str, str] = {"sandbox-key": "sandbox-secret"}
        # Username -> password for the OAuth password grant.
        self.oauth_users: dict[str, str] = {"integration@stripe-sf.sandbox": "sandbox-password"}
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        # Set by SalesforceSandbox so SalesforceFaultPlan.lock_rows can fail individual writes.
        self.row_lock_hook: Callable[[str, list[str], str], bool] | None = None
        self._data: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.schema}
        self._deleted: dict[str, tuple[str, dict[str, Any]]] = {}
        self._indexes: dict[tuple[str, str, bool], dict[str, list[str]]] = {}
        # Each live record's place in its table's order (what a query without ORDER BY follows), so that rows
        # found through an index come back in that order without walking the table (`_indexed`).
        self._places: dict[str, int] = {}
        self._place_seq = itertools.count()
        self._tokens: set[str] = set()
        self._cursors: dict[str, tuple[str, int, list[dict[str, Any]]]] = {}
        self._jobs: dict[str, _IngestJob] = {}
        # Benchmark counters, read by benchmarks/harness.py; they never change what the org answers.
        # sObject -> keys of the records written through sObject Collections and Bulk API 2.0.
        self.written_keys: dict[str, set[str]] = {}
        # "sObject.Field" -> values looked up with `=` / `IN (...)` conditions in SOQL queries.
        self.queried_keys: dict[str, set[str]] = {}

        self.integration_user_id = ""
        self.integration_user_id = self.insert(
            "User",
            {
                "Name": "Integration User",
                "Username": "integration@stripe-sf.sandbox",
                "Email": "integration@example.com",
                "IsActive": True,
            },
        )
        for name, username in (
            ("Ava Owner", "ava.owner"),
            ("Ben Owner", "ben.owner"),
            ("Cara CSM", "cara.csm"),
        ):
            self.insert(
                "User",
                {
                    "Name": name,
                    "Username": f"{username}@stripe-sf.sandbox",
                    "Email": f"{username}@example.com",
                    "IsActive": True,
                },
            )
        # Organization.DefaultCurrencyIsoCode: a single-currency org's currency (the corporate one of a
        # multi-currency org); `SELECT DefaultCurrencyIsoCode FROM Organization` reads it.
        # Organization.Id is the org's Id and IsSandbox says whether it is a sandbox (Object Reference:
        # Organization); `SELECT Id, IsSandbox FROM Organization` reads them.
        seeded = self.insert("Organization", {"Name": "Sandbox Org", "IsSandbox": is_sandbox,
                                              "OrganizationType": "Enterprise Edition",
                                              "DefaultCurrencyIsoCode": (self.currencies or [default_currency])[0]})
        organization = self._data["Organization"].pop(seeded)
        self._data["Organization"][self.org_id] = {**organization, "Id": self.org_id}
        types = (
            {"New Business": "New_Business", "Renewal": "Renewal"} if record_types is None else record_types
        )
        for label, dev_name in types.items():
            self.insert(
                "RecordType",
                {"Name": label, "DeveloperName": dev_name, "SobjectType": "Opportunity", "IsActive": True},
            )
        # (API name, label, won, closed). An admin may rename a stage's label while its API name stays
        # (Object Reference: OpportunityStage): the won stage's label may differ from the value StageName takes.
        stages = [
            ("Prospecting", "Prospecting", False, False),
            ("Qualification", "Qualification", False, False),
            ("Negotiation", "Negotiation", False, False),
            (won_stage, won_stage_label or won_stage, True, True),
            ("Closed Lost", "Closed Lost", False, True),
        ]
        for order, (api_name, label, won, closed) in enumerate(stages, start=1):
            self.insert(
                "OpportunityStage",
                {
                    "MasterLabel": label,
                    "ApiName": api_name,
                    "IsWon": won,
                    "IsClosed": closed,
                    "IsActive": True,
                    "SortOrder": order,
                },
            )

    # ------------------------------------------------------------------ public helpers

    def insert(self, sobject: str, record: dict[str, Any]) -> str:
        """Seed a record directly (no API usage); validated like an API create. Raises ValueError."""
        with self._lock:
            name = self._require_sobject(sobject)
            try:
                op = self.json_op("create", name, record, seeding=True)
            except ApiError as exc:
                raise ValueError(_flatten(exc.body)) from None
            outcome = self.apply_ops([op], all_or_none=True)[0]
            if not outcome.success:
                raise ValueError(_flatten(outcome.errors))
            assert outcome.id is not None
            return outcome.id

    def update(
        self, sobject: str, record_id: str, fields: dict[str, Any], *, as_user: str | None = None
    ) -> None:
        """Change a record directly (e.g. a rep editing it in the UI: `as_user` is that person's User Id or
        name, recorded as LastModifiedById). Raises ValueError."""
        with self._lock:
            name = self._require_sobject(sobject)
            try:
                op = self.json_op("update", name, fields, seeding=True)
            except ApiError as exc:
                raise ValueError(_flatten(exc.body)) from None
            op.record_id = record_id
            if as_user is not None:
                op.user = as_user if sfids.normalize_id(as_user) else self.user_id(as_user)
            outcome = self.apply_ops([op], all_or_none=True)[0]
            if not outcome.success:
                raise ValueError(_flatten(outcome.errors))

    def records(self, sobject: str) -> list[dict[str, Any]]:
        """Copies of all live records, in insertion order."""
        with self._lock:
            name = self._require_sobject(sobject)
            return [self._view(name, rec) for rec in self._data.get(name, {}).values()]

    def get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        """A copy of one live record (15- or 18-char Id), or None."""
        with self._lock:
            name = self._require_sobject(sobject)
            rid = sfids.normalize_id(record_id)
            rec = self._data.get(name, {}).get(rid) if rid else None
            return self._view(name, rec) if rec is not None else None

    def delete(self, sobject: str, record_id: str) -> None:
        """Delete a record (to the recycle bin); later updates by that Id fail with ENTITY_IS_DELETED."""
        with self._lock:
            name = self._require_sobject(sobject)
            outcome = self.apply_ops([_WriteOp("delete", name, record_id=record_id, seeding=True)], True)[0]
            if not outcome.success:
                raise ValueError(_flatten(outcome.errors))

    def merge(self, sobject: str, master_id: str, victim_ids: list[str]) -> list[str]:
        """Merge records as an admin does (merges.py): victims deleted with MasterRecordId set, children moved."""
        from .merges import merge

        with self._lock:
            return merge(self, self._require_sobject(sobject), master_id, victim_ids)

    def activate_currency(self, code: str) -> None:
        """What an admin does in Setup > Company Information > Currencies: a new active currency,
        accepted in CurrencyIsoCode from now on (a multi-currency org only)."""
        with self._lock:
            if self.currencies is None:
                raise ValueError("a single-currency org has no currencies to activate")
            if code.upper() not in self.currencies:
                self.currencies.append(code.upper())
                for sobject in ("Account", "Opportunity"):
                    self.schema[sobject]["CurrencyIsoCode"].picklist = list(self.currencies)

    def expire_sessions(self) -> None:
        """Invalidate every access token issued so far."""
        with self._lock:
            self._tokens.clear()

    def new_access_token(self) -> str:
        """Mint a valid access token (shaped like a real one: ``00D...!AQ...``)."""
        token = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        with self._lock:
            self._tokens.add(token)
        return token

    def token_valid(self, token: str) -> bool:
        """Is this access token currently accepted?"""
        with self._lock:
            return token in self._tokens

    def user_id(self, name: str) -> str:
        """Id of a user by Name or Username (convenience for tests)."""
        with self._lock:
            for rec in self._data["User"].values():
                if name in (rec.get("Name"), rec.get("Username")):
                    return str(rec["Id"])
        raise KeyError(name)

    def record_type_id(self, developer_name: str, sobject: str = "Opportunity") -> str:
        """Id of a record type by DeveloperName (convenience for tests)."""
        with self._lock:
            for rec in self._data["RecordType"].values():
                if rec.get("DeveloperName") == developer_name and rec.get("SobjectType") == sobject:
                    return str(rec["Id"])
        raise KeyError(developer_name)

    # ------------------------------------------------------------------ schema helpers

    def sobject_name(self, name: str) -> str | None:
        """Schema spelling of an sObject name (case-insensitive), or None."""
        if name in self.schema:
            return name
        low = name.lower()
        return next((s for s in self.schema if s.lower() == low), None)

    def add_field(self, sobject: str, field: FieldDef) -> None:
        """Add a custom field (Setup: New Custom Field), empty on the records the org holds."""
        with self._lock:
            self.schema[sobject][field.name] = field
            for rec in getattr(self, "_data", {}).get(sobject, {}).values():
                rec.setdefault(field.name, None)

    def require_field(self, qualified: str) -> None:
        """Make "Object.Field" required (Setup: the field's "Required" box), adding it as a Text(80) custom
        field when the schema lacks it: a create without it fails with REQUIRED_FIELD_MISSING."""
        sobject, _, name = qualified.partition(".")
        with self._lock:
            known = self.schema[sobject].get(name)
            self.schema[sobject][name] = (replace(known, required=True) if known is not None
                                          else FieldDef(name, "string", length=80, required=True))
            for rec in getattr(self, "_data", {}).get(sobject, {}).values():  # none yet while the org is built
                rec.setdefault(name, None)

    def _require_sobject(self, name: str) -> str:
        resolved = self.sobject_name(name)
        if resolved is None:
            raise ValueError(f"INVALID_TYPE: sObject type '{name}' is not supported.")
        self._data.setdefault(resolved, {})
        return resolved

    def field_def(self, sobject: str, name: str, *, admin: bool = False) -> FieldDef | None:
        """Field definition by case-insensitive name; one the API user cannot see is None unless `admin`."""
        fields = self.schema[sobject]
        found = fields.get(name)
        if found is None:
            low = name.lower()
            found = next((f for f in fields.values() if f.name.lower() == low), None)
        return found if found is None or found.visible or admin else None

    def _relationship(self, sobject: str, rel: str) -> FieldDef | None:
        low = rel.lower()
        return next(
            (
                f
                for f in self.schema[sobject].values()
                if f.relationship_name and f.relationship_name.lower() == low
            ),
            None,
        )

    def prefix_of(self, sobject: str) -> str:
        """Key prefix for an sObject (custom objects get a00, a01, ...)."""
        if sobject not in self.key_prefixes:
            self.key_prefixes[sobject] = sfids.custom_key_prefix(len(self.key_prefixes))
        return self.key_prefixes[sobject]

    def sobject_for_prefix(self, prefix: str) -> str | None:
        """Which sObject an Id with this prefix belongs to."""
        return next((s for s, p in self.key_prefixes.items() if p == prefix and s in self.schema), None)

    def _view(self, sobject: str, rec: dict[str, Any]) -> dict[str, Any]:
        out = {name: copy.deepcopy(rec.get(name)) for name in self.schema[sobject]}
        if "IsDeleted" in out and out["IsDeleted"] is None:
            out["IsDeleted"] = False
        if sobject == "Task":
            out["IsArchived"] = self._archived(rec)  # it depends on today's date
        return out

    def _find(self, record_id: str) -> tuple[str | None, dict[str, Any] | None, bool]:
        """(sobject, record, deleted) for an 18-char Id, searching live then deleted records."""
        sobject = self.sobject_for_prefix(record_id[:3])
        if sobject is not None:
            rec = self._data.get(sobject, {}).get(record_id)
            if rec is not None:
                return sobject, rec, False
        if record_id in self._deleted:
            sob, rec = self._deleted[record_id]
            return sob, rec, True
        return sobject, None, False

    # ------------------------------------------------------------------ indexes

    @staticmethod
    def _norm(value: Any, case_sensitive: bool) -> str:
        text = value if isinstance(value, str) else str(value)
        return text if case_sensitive else text.casefold()

    def _index(self, sobject: str, fd: FieldDef) -> dict[str, list[str]]:
        key = (sobject, fd.name, fd.case_sensitive)
        idx = self._indexes.get(key)
        if idx is None:
            idx = {}
            for rid, rec in self._data.get(sobject, {}).items():
                val = rec.get(fd.name)
                if val not in (None, ""):
                    idx.setdefault(self._norm(val, fd.case_sensitive), []).append(rid)
            self._indexes[key] = idx
        return idx

    def _index_update(self, sobject: str, rec: dict[str, Any] | None, add: bool) -> None:
        if rec is None:
            return
        for (sob, fname, cs), idx in self._indexes.items():
            if sob != sobject:
                continue
            val = rec.get(fname)
            if val in (None, ""):
                continue
            bucket = idx.setdefault(self._norm(val, cs), [])
            if add:
                bucket.append(rec["Id"])
            elif rec["Id"] in bucket:
                bucket.remove(rec["Id"])

    def _lookup(self, sobject: str, fd: FieldDef, value: Any) -> list[str]:
        if fd.type == "id":
            rid = sfids.normalize_id(value)
            return [rid] if rid and rid in self._data.get(sobject, {}) else []
        return list(self._index(sobject, fd).get(self._norm(value, fd.case_sensitive), []))

    # ------------------------------------------------------------------ storage with undo

    def _put(self, sobject: str, rec: dict[str, Any], undo: list[tuple[Any, ...]]) -> None:
        table = self._data.setdefault(sobject, {})
        prev = table.get(rec["Id"])
        undo.append(("put", sobject, rec["Id"], prev))
        self._index_update(sobject, prev, add=False)
        if prev is None:
            self._places[rec["Id"]] = next(self._place_seq)
        table[rec["Id"]] = rec
        self._index_update(sobject, rec, add=True)

    def _remove(self, sobject: str, rid: str, undo: list[tuple[Any, ...]]) -> None:
        rec = self._data[sobject].pop(rid)
        self._index_update(sobject, rec, add=False)
        dead = dict(rec, IsDeleted=True)
        self._deleted[rid] = (sobject, dead)
        undo.append(("del", sobject, rid, rec))

    def _rollback(self, undo: list[tuple[Any, ...]]) -> None:
        for action, sobject, rid, prev in reversed(undo):
            table = self._data.setdefault(sobject, {})
            if action == "put":
                self._index_update(sobject, table.get(rid), add=False)
                if prev is None:
                    table.pop(rid, None)
                else:
                    table[rid] = prev
                    self._index_update(sobject, prev, add=True)
            else:
                self._deleted.pop(rid, None)
                self._places[rid] = next(self._place_seq)  # back at the end of its table, as a dict puts it
                table[rid] = prev
                self._index_update(sobject, prev, add=True)
        self._sync_stage_picklist()

    def _sync_stage_picklist(self) -> None:
        # StageName is a restricted picklist whose values are the active stages' API names; their
        # labels (MasterLabel) are only shown to people (Object Reference: OpportunityStage).
        stages = sorted(
            (r for r in self._data.get("OpportunityStage", {}).values() if r.get("IsActive")),
            key=lambda r: r.get("SortOrder") or 0,
        )
        fd = self.schema.get("Opportunity", {}).get("StageName")
        if fd is not None:
            fd.picklist = [str(r.get("ApiName") or r["MasterLabel"]) for r in stages]
            fd.picklist_labels = {str(r.get("ApiName") or r["MasterLabel"]): str(r["MasterLabel"]) for r in stages}

    # ------------------------------------------------------------------ benchmark counters

    def reset_key_counters(self) -> None:
        """Empty `written_keys` and `queried_keys` (a benchmark does this just before the measured run)."""
        with self._lock:
            self.written_keys = {}
            self.queried_keys = {}

    def _note_written(self, ops: list[_WriteOp], outcomes: list[_Outcome]) -> None:
        """Add the records of an API write to `written_keys`.

        A successful create, update or upsert counts the record's Id (a create's new Id); a failed one
        the key it was sent with (Id or `Field=value`), since it still took a slot in the call.
        """
        with self._lock:
            for op, outcome in zip(ops, outcomes, strict=True):
                if op.kind == "delete" or not op.sobject:
                    continue
                key: Any = outcome.id if outcome.success else None
                if key is None and op.record_id:
                    key = sfids.normalize_id(str(op.record_id)) or op.record_id
                elif key is None and op.ext_field:
                    key = f"{op.ext_field}={op.ext_value}"
                if key is not None:
                    self.written_keys.setdefault(op.sobject, set()).add(str(key))

    def _note_queried(
        self,
        sobject: str,
        node: soql.Node | None,
        bind: Callable[[str, int], tuple[str, FieldDef, FieldDef | None]],
    ) -> None:
        """Add the values of a query's `=` / `IN` conditions to `queried_keys` (negations are not look-ups)."""
        if isinstance(node, soql.Logical):
            for item in node.items:
                self._note_queried(sobject, item, bind)
            return
        if not isinstance(node, soql.Comparison) or node.op not in ("=", "IN"):
            return
        path, fd, _ref = bind(node.field, node.pos)
        keys = self.queried_keys.setdefault(f"{sobject}.{path}", set())
        for lit in node.values:
            value = lit.value
            if fd.type in ("id", "reference") and isinstance(value, str):
                value = sfids.normalize_id(value) or value  # 15- and 18-char forms are one record
            if value is not None:
                keys.add(str(value))

    # ------------------------------------------------------------------ building write ops

    def json_op(self, kind: str, sobject: str, raw: dict[str, Any], *, seeding: bool = False) -> _WriteOp:
        """Turn a JSON record body into a write op; unknown fields reject the whole request (400)."""
        op = _WriteOp(kind, sobject, seeding=seeding)
        if not isinstance(raw, dict):
            raise _api_error(
                400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from non-object value"
            )
        for key, value in raw.items():
            if key == "attributes":
                continue
            if key.lower() == "id" and kind != "create":
                op.record_id = value
                continue
            fd = self.field_def(sobject, key, admin=seeding)
            if fd is not None:
                op.fields[fd.name] = value
                continue
            rel = self._relationship(sobject, key)
            if rel is not None and isinstance(value, dict):
                op.refs[rel.name] = self._parse_ref(sobject, rel, value)
                continue
            raise _api_error(400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {sobject}")
        return op

    def _parse_ref(self, sobject: str, rel: FieldDef, value: dict[str, Any]) -> tuple[str | None, str, Any]:
        attrs = value.get("attributes") or {}
        target = attrs.get("type") if isinstance(attrs, dict) else None
        keys = [k for k in value if k != "attributes"]
        if len(keys) != 1:
            raise _api_error(
                400,
                "INVALID_FIELD",
                f"Foreign key external ID reference for {rel.relationship_name} on {sobject} "
                "must specify exactly one external ID field",
            )
        return (target, keys[0], value[keys[0]])

    # ------------------------------------------------------------------ applying ops

    def apply_ops(self, ops: list[_WriteOp], all_or_none: bool) -> list[_Outcome]:
        """Apply ops in order as one transaction-like unit; roll everything back on allOrNone failure."""
        with self._lock:
            undo: list[tuple[Any, ...]] = []
            outcomes: list[_Outcome] = []
            dupes = self._duplicate_ext_values(ops)
            for i, op in enumerate(ops):
                if op.pre_errors:
                    outcomes.append(_Outcome(None, False, op.pre_errors))
                    continue
                if i in dupes:
                    outcomes.append(
                        _Outcome(
                            None,
                            False,
                            [_err("DUPLICATE_VALUE", f"Duplicate external id specified: {op.ext_value}")],
                        )
                    )
                    continue
                mark = len(undo)
                try:
                    rid, created = self._apply_one(op, undo)
                    outcomes.append(_Outcome(rid, True, [], created))
                except _RecordError as exc:
                    # A failed record must leave no partial writes (e.g. cascade deletes).
                    self._rollback(undo[mark:])
                    del undo[mark:]
                    outcomes.append(_Outcome(None, False, exc.errors))
            if all_or_none and any(not o.success for o in outcomes):
                self._rollback(undo)
                outcomes = [
                    o
                    if not o.success
                    else _Outcome(None, False, [_err("ALL_OR_NONE_OPERATION_ROLLED_BACK", _ROLLED_BACK)])
                    for o in outcomes
                ]
            elif any(op.sobject == "OpportunityStage" for op in ops):
                self._sync_stage_picklist()
            if any(op.sobject == "PermissionSetAssignment" for op in ops):
                from .metadata import refresh_access

                refresh_access(self)  # a set assigned to the API user may grant it fields
            return outcomes

    def _duplicate_ext_values(self, ops: list[_WriteOp]) -> set[int]:
        # The same external id twice in one upsert request fails both records, like a real org.
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, op in enumerate(ops):
            if op.kind != "upsert" or not op.ext_field or op.ext_field == "Id" or op.ext_value in (None, ""):
                continue
            fd = self.schema[op.sobject].get(op.ext_field)
            cs = fd.case_sensitive if fd else False
            groups.setdefault((op.sobject, op.ext_field, self._norm(op.ext_value, cs)), []).append(i)
        return {i for members in groups.values() if len(members) > 1 for i in members}

    def _apply_one(self, op: _WriteOp, undo: list[tuple[Any, ...]]) -> tuple[str, bool]:
        sobject = op.sobject
        if op.kind == "delete":
            return self._delete_one(op, undo), False
        if sobject in _SETUP_OBJECTS and not op.seeding:
            verb = "inserted" if op.kind == "create" else "updated"
            raise _fail("INVALID_TYPE_FOR_OPERATION", f"entity type cannot be {verb}: {sobject}")
        schema = self.schema[sobject]
        existing: dict[str, Any] | None = None
        if op.kind == "update":
            existing = self._target(sobject, op.record_id)
        elif op.kind == "upsert":
            existing = self._upsert_target(op)
        creating = existing is None
        if not op.seeding and sobject in (self.no_create if creating else self.no_edit):
            verb = "inserted" if creating else "updated"
            raise _fail("CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY", f"entity type cannot be {verb}: {sobject}")
        fields = dict(op.fields)
        if op.kind == "upsert" and op.ext_field and op.ext_field != "Id":
            if creating:
                fields[op.ext_field] = op.ext_value
            elif op.ext_from_url:
                fields.pop(op.ext_field, None)  # already checked equal to the URL value

        self._check_row_lock(sobject, existing, fields)

        # Field-level security: read-only fields are rejected, not ignored.
        if creating and "Id" in fields and not op.seeding:
            raise _fail("INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", ["Id"])
        bad = [
            name
            for name in fields
            if not (op.seeding and name in _SEEDABLE)
            and not (schema[name].createable if creating else schema[name].updateable)
        ]
        if bad:
            raise _fail(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(bad)}. Please check the security settings "
                "of this field and verify that it is read/write for your profile or permission set.",
                bad,
            )

        values: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for name, raw in fields.items():
            try:
                values[name] = self._coerce(sobject, schema[name], raw)
            except _RecordError as exc:
                errors.extend(exc.errors)
        for ref_field, (target, ext_field, ext_value) in op.refs.items():
            try:
                values[ref_field] = self._resolve_ref(
                    sobject, schema[ref_field], target, ext_field, ext_value
                )
            except _RecordError as exc:
                errors.extend(exc.errors)
        if errors:
            raise _RecordError(errors)

        now = _now_iso(self.clock())
        user = op.user or self.integration_user_id
        if existing is None:
            rec: dict[str, Any] = {
                name: (False if fd.type == "boolean" else None) for name, fd in schema.items()
            }
            rec.update(
                {
                    "Id": self._ids.new(self.prefix_of(sobject)),
                    "IsDeleted": False,
                    "CreatedDate": now,
                    "LastModifiedDate": now,
                    "SystemModstamp": now,
                    "CreatedById": user or None,
                    "LastModifiedById": user or None,
                }
            )
            if op.seeding and "Id" in values:
                self._check_seed_id(sobject, values)
            rec.update({k: v for k, v in values.items() if v is not None or k not in _SEEDABLE})
            self._apply_create_defaults(sobject, rec, values)
        else:
            rec = dict(existing)
            rec.update(values)
            rec["LastModifiedDate"] = values.get("LastModifiedDate") or now
            rec["SystemModstamp"] = values.get("SystemModstamp") or now
            rec["LastModifiedById"] = user or None
        self._derive(sobject, rec)

        self._check_required(sobject, rec, values, creating)
        self._check_validation_rules(sobject, rec, creating)
        self._check_references(sobject, rec, values if not creating else rec, as_admin=op.seeding)
        self._check_unique(sobject, rec, values if not creating else rec)
        if creating and not op.seeding and self.duplicate_rules:
            from .duplicates import duplicate_errors

            if errors := duplicate_errors(self, sobject, rec):
                raise _RecordError(errors)
        if sobject == "PermissionSetAssignment" and not op.seeding:
            from .metadata import check_assignment

            check_assignment(self, rec)  # one assignment per user and set, by a user who may assign
        self._put(sobject, rec, undo)
        return rec["Id"], creating

    def _check_seed_id(self, sobject: str, values: dict[str, Any]) -> None:
        rid = sfids.normalize_id(values["Id"])
        if rid is None or rid[:3] != self.prefix_of(sobject):
            raise _fail("MALFORMED_ID", f"malformed id {values['Id']}", ["Id"])
        _type, existing, _dead = self._find(rid)
        if existing is not None:
            raise _fail(
                "DUPLICATE_VALUE", f"duplicate value found: Id duplicates value on record with id: {rid}"
            )
        values["Id"] = rid

    def _apply_create_defaults(self, sobject: str, rec: dict[str, Any], values: dict[str, Any]) -> None:
        schema = self.schema[sobject]
        if "OwnerId" in schema and rec.get("OwnerId") is None:
            rec["OwnerId"] = self.integration_user_id or None
        if "CurrencyIsoCode" in schema and rec.get("CurrencyIsoCode") is None and self.currencies:
            # Without one, a record takes the running user's currency: here, the corporate currency.
            rec["CurrencyIsoCode"] = self.currencies[0]
        if sobject == "Task":
            rec["Status"] = rec.get("Status") or "Not Started"
            rec["Priority"] = rec.get("Priority") or "Normal"
        if sobject in _SETUP_OBJECTS and "IsActive" in schema and "IsActive" not in values:
            rec["IsActive"] = True
        if sobject == "Opportunity" and not self.require_record_type and rec.get("RecordTypeId") is None:
            # Without an explicit record type, a real org assigns the user's default one.
            rec["RecordTypeId"] = next(
                (
                    r["Id"]
                    for r in self._data.get("RecordType", {}).values()
                    if r.get("SobjectType") == "Opportunity" and r.get("IsActive")
                ),
                None,
            )

    def _derive(self, sobject: str, rec: dict[str, Any]) -> None:
        # Formula-like read-only fields are recomputed on every write, as the platform does.
        if sobject == "Opportunity":
            stage = next(
                (
                    s
                    for s in self._data.get("OpportunityStage", {}).values()
                    if (s.get("ApiName") or s.get("MasterLabel")) == rec.get("StageName")
                ),
                None,
            )
            rec["IsWon"] = bool(stage and stage.get("IsWon"))
            rec["IsClosed"] = bool(stage and stage.get("IsClosed"))
        elif sobject == "Task" and "AccountId" in self.schema["Task"]:
            what = rec.get("WhatId")
            account = None
            if what:
                what_type, what_rec, _dead = self._find(what)
                if what_type == "Account":
                    account = what
                elif what_type == "Opportunity" and what_rec is not None:
                    account = what_rec.get("AccountId")
            rec["AccountId"] = account

    def _target(self, sobject: str, raw_id: Any) -> dict[str, Any]:
        if raw_id in (None, ""):
            raise _fail("MISSING_ARGUMENT", "Id not specified in an update call", [])
        rid = sfids.normalize_id(raw_id)
        if rid is None:
            raise _fail("MALFORMED_ID", f"malformed id {raw_id}", ["Id"])
        if rid[:3] != self.prefix_of(sobject):
            raise _fail("MALFORMED_ID", f"{sobject} ID: id value of incorrect type: {raw_id}", ["Id"])
        rec = self._data.get(sobject, {}).get(rid)
        if rec is not None:
            return rec
        if rid in self._deleted:
            raise _fail("ENTITY_IS_DELETED", "entity is deleted", [])
        raise _fail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])

    def _upsert_target(self, op: _WriteOp) -> dict[str, Any] | None:
        assert op.ext_field is not None
        if op.record_id not in (None, "") and op.ext_field != "Id":
            raise _fail(
                "INVALID_FIELD",
                "Id is not allowed in the request body when upserting by an external ID "
                f"field ({op.ext_field})",
                ["Id"],
            )
        if op.ext_field == "Id":
            return None if op.ext_value in (None, "") else self._target(op.sobject, op.ext_value)
        if op.ext_value in (None, ""):
            raise _fail("MISSING_ARGUMENT", f"{op.ext_field} not specified", [op.ext_field])
        fd = self.schema[op.sobject][op.ext_field]
        if not op.seeding and not self.may_upsert_by(fd):
            raise _fail("INSUFFICIENT_ACCESS", _NON_UNIQUE_UPSERT)
        body_value = op.fields.get(op.ext_field)
        if (
            op.ext_from_url
            and body_value not in (None, "")
            and (self._norm(body_value, fd.case_sensitive) != self._norm(op.ext_value, fd.case_sensitive))
        ):
            raise _fail(
                "INVALID_FIELD",
                f"The value of {op.ext_field} in the request body ({body_value}) doesn't "
                f"match the external ID in the URL ({op.ext_value})",
                [op.ext_field],
            )
        matches = self._lookup(op.sobject, fd, op.ext_value)
        if len(matches) > 1:
            raise _fail(
                "DUPLICATE_EXTERNAL_ID",
                f"{op.ext_field}: more than one record found for external id field: [{', '.join(matches)}]",
                [op.ext_field],
            )
        return self._data[op.sobject][matches[0]] if matches else None

    def may_upsert_by(self, fd: FieldDef) -> bool:
        """Without a unique index, an upsert by a user who cannot see every record could duplicate one it
        cannot see, so Salesforce requires "View All Data" for it (REST API: Upsert a Record Using an External ID)."""
        return fd.type == "id" or fd.unique or not fd.external_id or self.view_all_data

    def _check_row_lock(self, sobject: str, existing: dict[str, Any] | None, fields: dict[str, Any]) -> None:
        if self.row_lock_hook is None:
            return
        keys: list[str] = []
        schema = self.schema[sobject]
        for source in (existing or {}, fields):
            for name, value in source.items():
                fd = schema.get(name)
                if value not in (None, "") and fd is not None and (fd.type == "id" or fd.external_id):
                    keys.append(str(value))
        rid = existing["Id"] if existing else (keys[0] if keys else "")
        if keys and self.row_lock_hook(sobject, keys, rid):
            raise _fail(
                "UNABLE_TO_LOCK_ROW",
                f"unable to obtain exclusive access to this record or 1 records: {rid}",
                [],
            )

    # ------------------------------------------------------------------ value coercion

    def _coerce(self, sobject: str, fd: FieldDef, raw: Any) -> Any:
        label = fd.display_label
        if raw is None or raw == "":
            return False if fd.type == "boolean" else None
        if isinstance(raw, dict | list):
            raise _fail(
                "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [fd.name]
            )
        t = fd.type
        if t in _TEXT_TYPES or t == "id":
            text = (
                raw
                if isinstance(raw, str)
                else ("true" if raw is True else "false" if raw is False else str(raw))
            )
            if fd.length is not None and len(text) > fd.length:
                shown = text if len(text) <= 100 else text[:100] + "..."
                raise _fail(
                    "STRING_TOO_LONG",
                    f"{label}: data value too large: {shown} (max length={fd.length})",
                    [fd.name],
                )
            if t == "picklist" and fd.restricted and text not in (fd.picklist or []):
                raise _fail(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"bad value for restricted picklist field: {text}",
                    [fd.name],
                )
            if t == "email" and not _EMAIL_RE.match(text):
                raise _fail("INVALID_EMAIL_ADDRESS", f"{label}: invalid email address: {text}", [fd.name])
            return text
        if t == "boolean":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
                return raw.strip().lower() == "true"
            raise _fail(
                "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [fd.name]
            )
        if t in _NUMBER_TYPES:
            return self._coerce_number(fd, raw)
        if t == "date":
            if isinstance(raw, str) and _DATE_RE.match(raw):
                try:
                    date.fromisoformat(raw)
                    return raw
                except ValueError:
                    pass
            raise _fail(
                "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [fd.name]
            )
        if t == "datetime":
            if isinstance(raw, str) and _DATETIME_RE.match(raw.strip()):
                try:
                    return soql.normalize_datetime(raw)
                except ValueError:
                    pass
            raise _fail(
                "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [fd.name]
            )
        if t == "reference":
            return self._coerce_reference(fd, raw)
        return raw

    @staticmethod
    def _coerce_number(fd: FieldDef, raw: Any) -> float:
        label = fd.display_label
        if isinstance(raw, bool):
            raise _fail(
                "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [fd.name]
            )
        try:
            num = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(str(raw))
        except InvalidOperation:
            raise _fail(
                "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [fd.name]
            ) from None
        if not num.is_finite():
            raise _fail(
                "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{label}: value not of required type: {raw}", [fd.name]
            )
        if fd.scale is not None:
            # Real orgs round extra decimals silently; only too many integer digits is an error.
            num = num.quantize(Decimal(1).scaleb(-fd.scale), rounding=ROUND_HALF_UP)
        if fd.precision is not None:
            int_digits = len(str(abs(int(num)))) if abs(num) >= 1 else 0
            if int_digits > fd.precision - (fd.scale or 0):
                raise _fail(
                    "NUMBER_OUTSIDE_VALID_RANGE",
                    f"{label}: value outside of valid range on numeric field: {raw}",
                    [fd.name],
                )
        return float(num)

    def _coerce_reference(self, fd: FieldDef, raw: Any) -> str:
        if not isinstance(raw, str):
            raise _fail("MALFORMED_ID", f"malformed id {raw}", [fd.name])
        rid = sfids.normalize_id(raw.strip())
        if rid is None:
            raise _fail("MALFORMED_ID", f"malformed id {raw}", [fd.name])
        allowed = {self.prefix_of(t) for t in (fd.reference_to or [])}
        if rid[:3] not in allowed:
            raise _fail(
                "FIELD_INTEGRITY_EXCEPTION",
                f"{fd.display_label}: id value of incorrect type: {raw}",
                [fd.name],
            )
        return rid

    def _resolve_ref(self, sobject: str, fd: FieldDef, target: str | None, ext_field: str, value: Any) -> str:
        targets = fd.reference_to or []
        if target is None:
            if len(targets) != 1:
                raise _fail(
                    "INVALID_FIELD",
                    f"Polymorphic reference {fd.relationship_name} needs attributes.type",
                    [fd.name],
                )
            target = targets[0]
        resolved = self.sobject_name(target)
        if resolved is None or resolved not in targets:
            raise _fail("INVALID_FIELD", f"{fd.display_label}: invalid reference type {target}", [fd.name])
        efd = self.field_def(resolved, ext_field)
        if efd is None or not (efd.external_id or efd.type == "id"):
            raise _fail(
                "INVALID_FIELD",
                f"Field {ext_field} is not an External ID or indexed field for {resolved}",
                [fd.name],
            )
        matches = self._lookup(resolved, efd, value) if value not in (None, "") else []
        if not matches:
            raise _fail(
                "INVALID_FIELD",
                f"Foreign key external ID: {value} not found for field {efd.name} in entity {resolved}",
                [fd.name],
            )
        if len(matches) > 1:
            raise _fail(
                "DUPLICATE_EXTERNAL_ID",
                f"Foreign key external ID: {value} matches more than one record "
                f"for field {efd.name} in entity {resolved}",
                [fd.name],
            )
        return matches[0]

    # ------------------------------------------------------------------ record-level checks

    def _check_required(
        self, sobject: str, rec: dict[str, Any], values: dict[str, Any], creating: bool
    ) -> None:
        schema = self.schema[sobject]
        missing = [
            name
            for name, fd in schema.items()
            if fd.required and rec.get(name) in (None, "") and (creating or name in values)
        ]
        if sobject == "Opportunity" and self.require_record_type and rec.get("RecordTypeId") in (None, ""):
            if creating or "RecordTypeId" in values:
                missing.append("RecordTypeId")
        if missing:
            raise _fail(
                "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )

    def _check_validation_rules(self, sobject: str, rec: dict[str, Any], creating: bool) -> None:
        for rule in self.validation_rules:
            if rule.sobject == sobject and (creating or not rule.on_create) and rec.get(rule.field) in (None, ""):
                raise _fail("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message, [rule.field])

    def _check_references(
        self, sobject: str, rec: dict[str, Any], changed: dict[str, Any], *, as_admin: bool = False
    ) -> None:
        schema = self.schema[sobject]
        for name in changed:
            fd = schema.get(name)
            value = rec.get(name)
            if fd is None or fd.type != "reference" or value in (None, "") or not fd.createable:
                continue
            _target, target_rec, dead = self._find(value)
            if name == "RecordTypeId":
                if (
                    target_rec is None
                    or dead
                    or target_rec.get("SobjectType") != sobject
                    or not target_rec.get("IsActive")
                    or (self._record_type_unavailable(target_rec) and not as_admin)
                ):
                    raise _fail(
                        "INVALID_CROSS_REFERENCE_KEY",
                        f"Record Type ID: this ID value isn't valid for the user: {value}",
                        [name],
                    )
                continue
            if dead:
                raise _fail("ENTITY_IS_DELETED", "entity is deleted", [name])
            if target_rec is None:
                raise _fail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [name])
            if name == "OwnerId" and not target_rec.get("IsActive"):
                raise _fail(
                    "INACTIVE_OWNER_OR_USER",
                    f"operation performed with inactive user [{value}] as owner of {sobject.lower()}",
                    [],
                )

    def _check_unique(self, sobject: str, rec: dict[str, Any], changed: dict[str, Any]) -> None:
        schema = self.schema[sobject]
        for name in changed:
            fd = schema.get(name)
            value = rec.get(name)
            if fd is None or not fd.unique or fd.type == "id" or value in (None, ""):
                continue
            others = [rid for rid in self._lookup(sobject, fd, value) if rid != rec["Id"]]
            if others:
                raise _fail(
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {name} duplicates value on record with id: {others[0]}",
                    [],
                )

    # ------------------------------------------------------------------ deletes

    def _delete_one(self, op: _WriteOp, undo: list[tuple[Any, ...]]) -> str:
        raw = op.record_id
        rid = sfids.normalize_id(raw)
        if rid is None:
            raise _fail("MALFORMED_ID", f"malformed id {raw}", [])
        sobject, rec, dead = self._find(rid)
        if dead:
            raise _fail("ENTITY_IS_DELETED", "entity is deleted", [])
        if rec is None or sobject is None:
            raise _fail("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
        if op.sobject not in ("*", sobject):
            raise _fail("MALFORMED_ID", f"{op.sobject} ID: id value of incorrect type: {raw}", [])
        if sobject in _SETUP_OBJECTS and not op.seeding:
            raise _fail("INVALID_TYPE_FOR_OPERATION", f"entity type cannot be deleted: {sobject}")
        self._check_row_lock(sobject, rec, {})
        self._remove(sobject, rid, undo)
        # Cascade like the platform: an Account takes its Opportunities, Contacts and activities with it.
        children: list[tuple[str, str]] = []
        if sobject == "Account":
            children += [
                ("Opportunity", r["Id"])
                for r in self._data.get("Opportunity", {}).values()
                if r.get("AccountId") == rid
            ]
            children += [
                ("Contact", r["Id"])
                for r in self._data.get("Contact", {}).values()
                if r.get("AccountId") == rid
            ]
        if sobject in ("Account", "Opportunity"):
            children += [
                ("Task", r["Id"])
                for r in self._data.get("Task", {}).values()
                if r.get("WhatId") == rid or r.get("AccountId") == rid
            ]
        for child_type, child_id in children:
            if child_id in self._data.get(child_type, {}):
                self._delete_one(_WriteOp("delete", child_type, record_id=child_id, seeding=True), undo)
        return rid

    # ------------------------------------------------------------------ SOQL

    def run_query(
        self, text: str, *, version: str, include_deleted: bool = False, batch_size: int = QUERY_BATCH_SIZE
    ) -> dict[str, Any]:
        """Execute a SOQL query; raises soql.SoqlError for anything a real org would refuse."""
        with self._lock:
            from . import aggregate

            if aggregate.is_grouped(text):  # values held by several records: the one aggregate it answers
                return aggregate.run_grouped(self, text, version=version)
            query = soql.parse(text)
            sobject = self.sobject_name(query.sobject)
            if sobject is None:
                raise query.error_at(
                    query.sobject_pos,
                    "INVALID_TYPE",
                    f"sObject type '{query.sobject}' is not supported. If you are attempting to use "
                    "a custom object, be sure to append the '__c' after the entity name. Please "
                    "reference your WSDL or the describe call for the appropriate names.",
                )
            bound: dict[str, tuple[str, FieldDef, FieldDef | None]] = {}

            def bind(name: str, pos: int) -> tuple[str, FieldDef, FieldDef | None]:
                key = name.lower()
                if key not in bound:
                    bound[key] = self._bind_field(query, sobject, name, pos)
                return bound[key]

            select = [(name, bind(name, pos)) for name, pos in query.fields]
            for name, pos in query.where_fields():
                bind(name, pos)
            self._check_where(query, query.where, bind)
            self._note_queried(sobject, query.where, bind)
            for item in query.order_by:
                _path, fd, _ref = bind(item.field, item.pos)
                if fd.long_text:
                    raise query.error_at(
                        item.pos, "INVALID_FIELD", f"field '{item.field}' can not be sorted in a query call"
                    )

            candidates = None if include_deleted else self._indexed(sobject, query.where, bind)
            rows = list(self._data.get(sobject, {}).values()) if candidates is None else candidates
            if sobject == "Task":
                for r in rows:
                    r["IsArchived"] = self._archived(r)
                if not include_deleted:  # archived activities: only queryAll returns them
                    rows = [r for r in rows if not r["IsArchived"]]
            if include_deleted:
                rows += [r for s, r in self._deleted.values() if s == sobject]

            def value_of(rec: dict[str, Any], name: str) -> tuple[str, Any]:
                _path, fd, ref = bind(name, 0)
                if ref is None:
                    return fd.type, rec.get(fd.name)
                parent_id = rec.get(ref.name)
                if not parent_id:
                    return fd.type, None
                _t, parent, dead = self._find(parent_id)
                return fd.type, (parent.get(fd.name) if parent is not None and not dead else None)

            if query.where is not None:
                where = query.where
                # ignored below: mypy cannot infer a lambda with a default argument (python/mypy#15459)
                rows = [r for r in rows if soql.evaluate(where, lambda n, r=r: value_of(r, n))]  # type: ignore[misc]
            if query.order_by:
                rows = soql.sort_records(rows, query.order_by, value_of)
            if query.offset:
                rows = rows[query.offset :]
            if query.limit is not None:
                rows = rows[: query.limit]
            if query.count:
                return {"totalSize": len(rows), "done": True, "records": []}
            out = [self._query_row(sobject, rec, select, version) for rec in rows]
            return self._page(out, version, "queryAll" if include_deleted else "query", batch_size)

    def _archived(self, task: dict[str, Any]) -> bool:
        """Salesforce archives a Task closed with a due date over 365 days ago: `query` no longer returns it,
        `queryAll` does, with IsArchived true (SOAP API Developer Guide: Task, IsArchived; api-facts §12)."""
        due = task.get("ActivityDate")
        if task.get("Status") != "Completed" or not isinstance(due, str):
            return False
        try:
            day = date.fromisoformat(due[:10])
        except ValueError:
            return False
        return (self.clock().date() - day).days > 365

    def _indexed(
        self, sobject: str, where: soql.Node | None, bind: Callable[[str, int], tuple[str, FieldDef, FieldDef | None]]
    ) -> list[dict[str, Any]] | None:
        """The live rows that a `field = x` or `field IN (...)` condition (alone or within an AND) on a text field
        or Id can match, found through the field's index, in storage order; None when no condition can use one.
        The WHERE clause is still evaluated on them: this only spares evaluating it on every row of a large
        table (a backfill's lookups against 100,000 Accounts made the stand-in the benchmark's bottleneck)."""
        conditions = [where] if isinstance(where, soql.Comparison) else (
            where.items if isinstance(where, soql.Logical) and where.op == "AND" else [])
        table = self._data.get(sobject, {})
        for cond in conditions:
            if not isinstance(cond, soql.Comparison) or cond.op not in ("=", "IN"):
                continue
            if any(lit.value in (None, "") or not isinstance(lit.value, str) for lit in cond.values):
                continue  # a null literal matches empty fields, which no index holds
            _path, fd, ref = bind(cond.field, cond.pos)
            if ref is not None:
                continue
            if fd.type == "id":
                ids = {sfids.normalize_id(lit.value) for lit in cond.values}
            elif fd.type in soql.INDEXABLE_TYPES:
                index = self._index(sobject, replace(fd, case_sensitive=False))  # SOQL compares text caselessly
                ids = {rid for lit in cond.values for rid in index.get(self._norm(lit.value, False), ())}
            else:
                continue
            return [table[rid] for rid in sorted((i for i in ids if i in table), key=self._places.__getitem__)]
        return None

    def _bind_field(
        self, query: soql.Query, sobject: str, name: str, pos: int
    ) -> tuple[str, FieldDef, FieldDef | None]:
        parts = name.split(".")
        no_such = (
            f"No such column '{name}' on entity '{sobject}'. If you are attempting to use a custom field, "
            "be sure to append the '__c' after the custom field name. Please reference your WSDL or the "
            "describe call for the appropriate names."
        )
        if len(parts) == 1:
            fd = self.field_def(sobject, name)
            if fd is None:
                raise query.error_at(pos, "INVALID_FIELD", no_such)
            return fd.name, fd, None
        if len(parts) > 2:
            raise query.error_at(pos, "INVALID_FIELD", no_such)
        rel = self._relationship(sobject, parts[0])
        if rel is None:
            raise query.error_at(
                pos,
                "INVALID_FIELD",
                f"Didn't understand relationship '{parts[0]}' in field path. If you are attempting "
                "to use a custom relationship, be sure to append the '__r' after the custom "
                "relationship name. Please reference your WSDL or the describe call for the "
                "appropriate names.",
            )
        for target in rel.reference_to or []:
            tname = self.sobject_name(target)
            fd = self.field_def(tname, parts[1]) if tname else None
            if fd is not None:
                return f"{rel.relationship_name}.{fd.name}", fd, rel
        raise query.error_at(
            pos,
            "INVALID_FIELD",
            f"No such column '{parts[1]}' on entity '{(rel.reference_to or ['?'])[0]}'. If you are "
            "attempting to use a custom field, be sure to append the '__c' after the custom field "
            "name. Please reference your WSDL or the describe call for the appropriate names.",
        )

    def _check_where(
        self,
        query: soql.Query,
        node: soql.Node | None,
        bind: Callable[[str, int], tuple[str, FieldDef, FieldDef | None]],
    ) -> None:
        if node is None:
            return
        if isinstance(node, soql.Comparison):
            _path, fd, _ref = bind(node.field, node.pos)
            soql.check_filter(query, node, fd.type, fd.long_text)
        elif isinstance(node, soql.Logical):
            for item in node.items:
                self._check_where(query, item, bind)
        else:
            self._check_where(query, node.item, bind)

    def _query_row(
        self,
        sobject: str,
        rec: dict[str, Any],
        select: list[tuple[str, tuple[str, FieldDef, FieldDef | None]]],
        version: str,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {
                "type": sobject,
                "url": f"/services/data/v{version}/sobjects/{sobject}/{rec['Id']}",
            }
        }
        for _name, (path, fd, ref) in select:
            if ref is None:
                value = rec.get(fd.name)
                out[fd.name] = False if value is None and fd.type == "boolean" else copy.deepcopy(value)
                continue
            rel_name = path.split(".")[0]
            parent_id = rec.get(ref.name)
            found = self._find(parent_id) if parent_id else (None, None, False)
            parent_type, parent, dead = found
            if parent is None or dead or parent_type is None:
                out.setdefault(rel_name, None)
                continue
            holder = out.get(rel_name)
            if holder is None:
                holder = {
                    "attributes": {
                        "type": parent_type,
                        "url": f"/services/data/v{version}/sobjects/{parent_type}/{parent_id}",
                    }
                }
                out[rel_name] = holder
            holder[fd.name] = copy.deepcopy(parent.get(fd.name))
        return out

    def _page(self, rows: list[dict[str, Any]], version: str, endpoint: str, batch: int) -> dict[str, Any]:
        result: dict[str, Any] = {"totalSize": len(rows), "done": len(rows) <= batch, "records": rows[:batch]}
        if len(rows) > batch:
            locator = self._ids.new("01g")
            self._cursors[locator] = (endpoint, batch, rows)
            result["nextRecordsUrl"] = f"/services/data/v{version}/{endpoint}/{locator}-{batch}"
        return result

    def query_more(self, locator: str, *, version: str) -> dict[str, Any]:
        """Next page of an earlier query (``<locator>-<offset>``)."""
        with self._lock:
            m = re.fullmatch(r"([A-Za-z0-9]{15,18})-(\d+)", locator)
            entry = self._cursors.get(m.group(1)) if m else None
            if m is None or entry is None:
                raise _api_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            endpoint, batch, rows = entry
            offset = int(m.group(2))
            result: dict[str, Any] = {
                "totalSize": len(rows),
                "done": offset + batch >= len(rows),
                "records": rows[offset : offset + batch],
            }
            if not result["done"]:
                result["nextRecordsUrl"] = (
                    f"/services/data/v{version}/{endpoint}/{m.group(1)}-{offset + batch}"
                )
            return result

    # ------------------------------------------------------------------ describe

    def describe(self, sobject: str, version: str) -> dict[str, Any]:
        """The sObject Describe payload (fields, picklists, record types)."""
        with self._lock:
            fields = []
            for fd in self.schema[sobject].values():
                if not fd.visible:
                    continue
                default_pick = None
                if sobject == "Task" and fd.name in ("Status", "Priority"):
                    default_pick = {"Status": "Not Started", "Priority": "Normal"}[fd.name]
                if fd.name == "CurrencyIsoCode" and self.currencies:
                    default_pick = self.currencies[0]
                fields.append(
                    {
                        "name": fd.name,
                        "label": fd.display_label,
                        "type": fd.type,
                        "length": fd.length or (18 if fd.type in ("id", "reference") else 0),
                        "externalId": fd.external_id,
                        "unique": fd.unique,
                        "caseSensitive": fd.case_sensitive,
                        "idLookup": fd.type == "id" or fd.external_id,
                        "nillable": not fd.required and fd.type not in ("boolean", "id"),
                        "createable": fd.createable,
                        "updateable": fd.updateable,
                        "defaultedOnCreate": fd.name in ("Id", "OwnerId", "CreatedDate", "IsDeleted")
                        or bool(default_pick),
                        "custom": fd.name.endswith("__c"),
                        "calculated": False,
                        "filterable": not fd.long_text,
                        "sortable": not fd.long_text,
                        "picklistValues": [
                            {
                                "value": v,
                                "label": (fd.picklist_labels or {}).get(v, v),
                                "active": True,
                                "defaultValue": v == default_pick,
                                "validFor": None,
                            }
                            for v in (fd.picklist or [])
                        ],
                        "restrictedPicklist": fd.restricted,
                        "referenceTo": list(fd.reference_to or []),
                        "relationshipName": fd.relationship_name,
                        "polymorphicForeignKey": len(fd.reference_to or []) > 1,
                        "precision": fd.precision or 0,
                        "scale": fd.scale or 0,
                    }
                )
            return {
                **self._describe_summary(sobject, version),
                "fields": fields,
                "recordTypeInfos": self._record_type_infos(sobject),
            }

    def _describe_summary(self, sobject: str, version: str) -> dict[str, Any]:
        writable = sobject not in _SETUP_OBJECTS
        base = f"/services/data/v{version}/sobjects/{sobject}"
        return {
            "name": sobject,
            "label": sobject,
            "labelPlural": sobject + "s",
            "keyPrefix": self.prefix_of(sobject),
            "custom": sobject.endswith("__c"),
            "createable": writable and sobject not in self.no_create,
            "updateable": writable and sobject not in self.no_edit,
            "deletable": writable,
            "queryable": True,
            "retrieveable": True,
            "searchable": True,
            "urls": {"sobject": base, "describe": base + "/describe", "rowTemplate": base + "/{ID}"},
        }

    def _record_type_infos(self, sobject: str) -> list[dict[str, Any]]:
        rts = [r for r in self._data.get("RecordType", {}).values() if r.get("SobjectType") == sobject]
        infos = []
        # The user's default is one they may use: the first available record type.
        usable = [r for r in rts if r.get("IsActive") and not self._record_type_unavailable(r)]
        for r in rts:
            infos.append(
                {
                    "name": r["Name"],
                    "recordTypeId": r["Id"],
                    "developerName": r["DeveloperName"],
                    "active": bool(r.get("IsActive")),
                    "available": bool(r.get("IsActive")) and not self._record_type_unavailable(r),
                    "master": False,
                    "defaultRecordTypeMapping": bool(usable) and r is usable[0] and not self.require_record_type,
                }
            )
        infos.append(
            {
                "name": "Master",
                "recordTypeId": sfids.MASTER_RECORD_TYPE_ID,
                "developerName": "Master",
                "active": True,
                "available": not rts,
                "master": True,
                "defaultRecordTypeMapping": not rts,
            }
        )
        return infos

    def _record_type_unavailable(self, rec: dict[str, Any]) -> bool:
        return bool({rec.get("Name"), rec.get("DeveloperName")} & self.unavailable_record_types)

    def describe_global(self, version: str) -> dict[str, Any]:
        """The describeGlobal payload."""
        with self._lock:
            return {
                "encoding": "UTF-8",
                "maxBatchSize": 200,
                "sobjects": [self._describe_summary(s, version) for s in self.schema],
            }

    # ------------------------------------------------------------------ Bulk API 2.0 ingest

    def create_job(self, payload: Any, version: str) -> dict[str, Any]:
        """POST jobs/ingest."""
        if not isinstance(payload, dict):
            raise _api_error(400, "JSON_PARSER_ERROR", "Cannot deserialize job request")
        with self._lock:
            obj = self.sobject_name(str(payload.get("object") or ""))
            operation = payload.get("operation")
            if obj is None:
                raise _api_error(
                    400, "INVALIDJOB", f"InvalidJob : Unable to find object: {payload.get('object')}"
                )
            if operation not in _BULK_OPERATIONS:
                raise _api_error(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
            if payload.get("contentType", "CSV") != "CSV":
                raise _api_error(400, "INVALIDJOB", "InvalidJob : Only CSV content is supported")
            delimiter = payload.get("columnDelimiter", "COMMA")
            line_ending = payload.get("lineEnding", "LF")
            if delimiter not in _DELIMITERS or line_ending not in ("LF", "CRLF"):
                raise _api_error(400, "INVALIDJOB", "InvalidJob : Invalid columnDelimiter or lineEnding")
            ext = payload.get("externalIdFieldName")
            if operation == "upsert":
                efd = self.field_def(obj, str(ext or ""))
                if not ext or efd is None or not (efd.external_id or efd.type == "id"):
                    raise _api_error(
                        400,
                        "INVALIDJOB",
                        f"InvalidJob : Field name provided, {ext} does not match an "
                        f"External ID, Salesforce Id, or indexed field for {obj}",
                    )
                ext = efd.name
            job = _IngestJob(
                id=self._ids.new("750"),
                object=obj,
                operation=operation,
                external_id_field=ext if operation == "upsert" else None,
                line_ending=line_ending,
                column_delimiter=delimiter,
                api_version=version,
                created_by=self.integration_user_id,
                created_date=_now_iso(self.clock()),
            )
            self._jobs[job.id] = job
            return job.info()

    def job(self, job_id: str) -> _IngestJob:
        """Look up an ingest job or raise 404 (a job whose processing time has come is processed first)."""
        job = self._jobs.get(job_id)
        if job is None:
            raise _api_error(404, "NOT_FOUND", "The requested resource does not exist")
        if job.ready_at is not None and self.clock() >= job.ready_at:
            job.ready_at = None
            self._process_job(job)
        return job

    def upload_job_data(self, job_id: str, data: bytes) -> None:
        """PUT jobs/ingest/{id}/batches."""
        with self._lock:
            job = self.job(job_id)
            if job.state != "Open":
                raise _api_error(409, "INVALIDJOBSTATE", f"Job is not open for uploads: {job.state}")
            if job.content is not None:
                raise _api_error(
                    400,
                    "BULK_API_ERROR",
                    f"Found multiple contents for job: <{job.id}>, please "
                    "'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure "
                    "you only do 'PUT' once on a given Job.",
                )
            try:
                job.content = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise _api_error(400, "INVALIDBATCH", "InvalidBatch : CSV data must be UTF-8") from None

    def set_job_state(self, job_id: str, payload: Any) -> dict[str, Any]:
        """PATCH jobs/ingest/{id}: close (UploadComplete, processed synchronously) or abort."""
        with self._lock:
            job = self.job(job_id)
            state = payload.get("state") if isinstance(payload, dict) else None
            if state == "UploadComplete":
                if job.state != "Open":
                    raise _api_error(409, "INVALIDJOBSTATE", f"Job is not open: {job.state}")
                job.state = "UploadComplete"
                info = job.info()
                if self.bulk_processing_seconds:
                    job.state = "InProgress"
                    job.ready_at = self.clock() + timedelta(seconds=self.bulk_processing_seconds)
                else:
                    self._process_job(job)
                return info
            if state == "Aborted":
                if job.state not in ("Open", "UploadComplete", "InProgress"):
                    raise _api_error(409, "INVALIDJOBSTATE", f"Job cannot be aborted: {job.state}")
                job.state = "Aborted"
                return job.info()
            raise _api_error(400, "INVALIDJOBSTATE", f"Invalid state: {state}")

    def delete_job(self, job_id: str) -> None:
        """DELETE jobs/ingest/{id}."""
        with self._lock:
            job = self.job(job_id)
            if job.state not in ("UploadComplete", "JobComplete", "Aborted", "Failed"):
                raise _api_error(409, "INVALIDJOBSTATE", f"Job cannot be deleted in state {job.state}")
            del self._jobs[job_id]

    def list_jobs(self) -> dict[str, Any]:
        """GET jobs/ingest."""
        with self._lock:
            return {"done": True, "records": [j.info() for j in self._jobs.values()], "nextRecordsUrl": None}

    def job_results(self, job_id: str, kind: str) -> str:
        """CSV for failedResults / successfulResults / unprocessedrecords."""
        with self._lock:
            job = self.job(job_id)
            if job.state in ("Open", "UploadComplete", "InProgress") and kind != "unprocessedrecords":
                raise _api_error(
                    409, "INVALIDJOBSTATE", "Job results are not available until the job is complete"
                )
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
            if kind == "failedResults":
                writer.writerow(["sf__Id", "sf__Error", *job.header])
                for row, outcome in job.results:
                    if not outcome.success:
                        writer.writerow([outcome.id or "", _bulk_error(outcome.errors), *row])
            elif kind == "successfulResults":
                writer.writerow(["sf__Id", "sf__Created", *job.header])
                for row, outcome in job.results:
                    if outcome.success:
                        writer.writerow([outcome.id, "true" if outcome.created else "false", *row])
            else:
                if job.header:
                    writer.writerow(job.header)
                writer.writerows(job.unprocessed)
            return buf.getvalue()

    def _process_job(self, job: _IngestJob) -> None:
        job.state = "InProgress"
        job.modstamp = _now_iso(self.clock())
        if not job.content or not job.content.strip():
            job.state, job.error_message = "Failed", "InvalidBatch : No data uploaded for job"
            return
        delimiter = _DELIMITERS[job.column_delimiter]
        rows = list(csv.reader(io.StringIO(job.content, newline=""), delimiter=delimiter))
        rows = [r for r in rows if r]
        job.header = rows[0]
        body = rows[1:]
        columns: list[tuple[str, str | None, str | None]] = []  # (kind, field, ref ext field)
        for col in job.header:
            name = col.strip()
            if "." in name:
                rel_name, ext_name = name.split(".", 1)
                rel = self._relationship(job.object, rel_name)
                if rel is None:
                    job.state, job.error_message = "Failed", f"InvalidBatch : Field name not found : {name}"
                    job.unprocessed = body
                    return
                columns.append(("ref", rel.name, ext_name))
                continue
            fd = self.field_def(job.object, name)
            if fd is None:
                job.state, job.error_message = "Failed", f"InvalidBatch : Field name not found : {name}"
                job.unprocessed = body
                return
            columns.append(("field", fd.name, None))
        names = [c[1] for c in columns]
        if job.operation in ("delete", "hardDelete") and names != ["Id"]:
            job.state, job.error_message = "Failed", "InvalidBatch : The 'delete' batch must contain only ids"
            job.unprocessed = body
            return
        if job.operation == "upsert" and job.external_id_field not in names:
            job.state = "Failed"
            job.error_message = f"InvalidBatch : Field name not found : {job.external_id_field}"
            job.unprocessed = body
            return
        for start in range(0, len(body), BULK_CHUNK_SIZE):
            chunk = body[start : start + BULK_CHUNK_SIZE]
            ops = [self._csv_op(job, columns, row) for row in chunk]
            outcomes = self.apply_ops(ops, all_or_none=False)
            self._note_written(ops, outcomes)
            job.results.extend(zip(chunk, outcomes, strict=True))
        job.state = "JobComplete"
        job.modstamp = _now_iso(self.clock())

    def _csv_op(
        self, job: _IngestJob, columns: list[tuple[str, str | None, str | None]], row: list[str]
    ) -> _WriteOp:
        kind = {"insert": "create", "hardDelete": "delete"}.get(job.operation, job.operation)
        op = _WriteOp(kind, job.object)
        for (col_kind, name, ext_name), raw in zip(columns, row, strict=False):
            assert name is not None
            if raw == "":
                continue  # empty cell: leave the field alone
            value: Any = None if raw == "#N/A" else raw
            if col_kind == "ref":
                assert ext_name is not None
                op.refs[name] = (None, ext_name, value)
            elif name == "Id" and kind != "create":
                op.record_id = value
            else:
                op.fields[name] = value
        if kind == "upsert":
            op.ext_field = job.external_id_field
            if op.ext_field == "Id":
                op.ext_value, op.record_id = op.record_id, None
            else:
                op.ext_value = op.fields.get(str(op.ext_field))
        return op

    # ------------------------------------------------------------------ OAuth

    def oauth_token(
        self, form: dict[str, str], basic: tuple[str, str] | None, instance_url: str
    ) -> tuple[int, Any]:
        """Handle POST /services/oauth2/token; returns (status, JSON body)."""
        grant = form.get("grant_type", "")
        client_id, client_secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        if grant == "client_credentials":
            if self.oauth_clients.get(client_id) != client_secret or not client_id:
                return 400, {"error": "invalid_client", "error_description": "invalid client credentials"}
        elif grant == "password":
            if self.oauth_clients.get(client_id) != client_secret or not client_id:
                return 400, {"error": "invalid_client", "error_description": "invalid client credentials"}
            username, password = form.get("username", ""), form.get("password", "")
            if not username or self.oauth_users.get(username) != password:
                return 400, {"error": "invalid_grant", "error_description": "authentication failure"}
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            claims = _decode_jwt(form.get("assertion", ""))
            if claims is None:
                return 400, {"error": "invalid_grant", "error_description": "invalid assertion"}
            if claims.get("iss") not in self.oauth_clients:
                return 400, {"error": "invalid_client_id", "error_description": "client identifier invalid"}
            exp = claims.get("exp")
            if not isinstance(exp, int | float) or exp < time.time():
                return 400, {"error": "invalid_grant", "error_description": "expired authorization code"}
            if not claims.get("sub") or not claims.get("aud"):
                return 400, {"error": "invalid_grant", "error_description": "invalid assertion"}
        else:
            return 400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"}
        token = self.new_access_token()
        issued = str(int(time.time() * 1000))
        return 200, {
            "access_token": token,
            "instance_url": instance_url,
            "id": f"{instance_url}/id/{self.org_id}/{self.integration_user_id}",
            "token_type": "Bearer",
            "issued_at": issued,
            "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
            "scope": "api",
        }


def _decode_jwt(assertion: str) -> dict[str, Any] | None:
    """Claims of a structurally valid JWT (signature is not verified), else None."""
    parts = assertion.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        decoded = [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2]]
        base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except (ValueError, binascii.Error):
        return None
    header, claims = decoded
    if not isinstance(header, dict) or not isinstance(claims, dict) or "alg" not in header:
        return None
    return claims


def _bulk_error(errors: list[dict[str, Any]]) -> str:
    """Bulk API failure string: ``CODE:message:Field1,Field2 --``."""
    first = errors[0] if errors else {"statusCode": "UNKNOWN_EXCEPTION", "message": "", "fields": []}
    return f"{first['statusCode']}:{first['message']}:{','.join(first.get('fields') or [])} --"


def _flatten(errors: Any) -> str:
    items = errors if isinstance(errors, list) else [errors]
    return "; ".join(f"{e.get('statusCode') or e.get('errorCode')}: {e.get('message')}" for e in items)


def _batch_size(headers: Any) -> int:
    """``Sforce-Query-Options: batchSize=N`` (200-2000; a request, not a guarantee, as in real orgs)."""
    m = re.search(r"batchSize\s*=\s*(\d+)", headers.get("Sforce-Query-Options") or "")
    return min(max(int(m.group(1)), 200), QUERY_BATCH_SIZE) if m else QUERY_BATCH_SIZE


def _to_rest_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collections use ``statusCode``; single-resource REST errors use ``errorCode``."""
    return [
        {"message": e["message"], "errorCode": e["statusCode"], "fields": e.get("fields", []),
         **({"duplicateResult": e["duplicateResult"]} if "duplicateResult" in e else {})} for e in errors
    ]


# ----------------------------------------------------------------------------------------------
# HTTP


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, dumps(body), headers=dict(headers or {}))


class _Api:
    """Routes /services/data/... requests to the org."""

    def __init__(self, sandbox: SalesforceSandbox) -> None:
        self.sandbox = sandbox
        self.org = sandbox.org

    def handle(self, method: str, path: str, query: str, headers: Any, body: bytes) -> _Response:
        org = self.org
        rest = path[len("/services/data") :].strip("/")
        authorised = self._authorised(headers)
        if rest and not authorised:
            return _json_response(
                401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
            )
        with org._lock:
            if org.api_used + 1 > org.daily_api_limit:
                return _json_response(
                    403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
                )
            org.api_used += 1
        if not rest:
            return _json_response(
                200,
                [
                    {"label": label, "url": f"/services/data/v{v}", "version": v}
                    for v, label in _RELEASES.items()
                ],
            )
        parts = [unquote(p) for p in rest.split("/")]
        m = _VERSION_RE.match(parts[0])
        if m is None:
            return self._not_found()
        version = m.group(1)
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            return self._route(method, version, parts[1:], params, body, headers)
        except ApiError as exc:
            return _json_response(exc.status, exc.body)
        except soql.SoqlError as exc:
            return _json_response(400, [{"message": exc.message, "errorCode": exc.error_code}])

    def _authorised(self, headers: Any) -> bool:
        auth = headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        return scheme.lower() in ("bearer", "oauth") and self.org.token_valid(token.strip())

    @staticmethod
    def _not_found() -> _Response:
        return _json_response(
            404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
        )

    @staticmethod
    def _method_not_allowed(method: str, allowed: str) -> _Response:
        return _json_response(
            405,
            [
                {
                    "errorCode": "METHOD_NOT_ALLOWED",
                    "message": f"HTTP Method '{method}' not allowed. Allowed are {allowed}",
                }
            ],
        )

    @staticmethod
    def _json_body(body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8") or "null", parse_float=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _api_error(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None

    def _route(
        self, method: str, version: str, parts: list[str], params: dict[str, str], body: bytes, headers: Any
    ) -> _Response:
        if not parts or parts == [""]:
            return _json_response(
                200,
                {
                    "sobjects": f"/services/data/v{version}/sobjects",
                    "query": f"/services/data/v{version}/query",
                    "limits": f"/services/data/v{version}/limits",
                    "composite": f"/services/data/v{version}/composite",
                    "jobs": f"/services/data/v{version}/jobs",
                },
            )
        head = parts[0]
        if head == "limits" and len(parts) == 1:
            org = self.org
            return _json_response(
                200,
                {
                    "DailyApiRequests": {
                        "Max": org.daily_api_limit,
                        "Remaining": max(org.daily_api_limit - org.api_used, 0),
                    },
                    "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
                    "DataStorageMB": {"Max": 5, "Remaining": 5},
                },
            )
        if head in ("query", "queryAll"):
            if method != "GET":
                return self._method_not_allowed(method, "GET")
            if len(parts) == 1:
                if "q" not in params:
                    raise _api_error(400, "MALFORMED_QUERY", "SOQL statements cannot be empty or null")
                result = self.org.run_query(
                    params["q"],
                    version=version,
                    include_deleted=head == "queryAll",
                    batch_size=_batch_size(headers),
                )
                return _json_response(200, result)
            if len(parts) == 2:
                return _json_response(200, self.org.query_more(parts[1], version=version))
            return self._not_found()
        if head == "sobjects":
            return self._sobjects(method, version, parts[1:], params, body)
        if head == "composite" and len(parts) >= 2 and parts[1] == "sobjects":
            return self._collections(method, version, parts[2:], params, body)
        if head == "composite" and len(parts) == 1:
            return self._composite(method, version, body, headers)
        if head == "jobs" and len(parts) >= 2 and parts[1] == "ingest":
            return self._ingest(method, version, parts[2:], body)
        if head == "metadata":
            from . import metadata

            return _json_response(*metadata.route(self.org, method, version, parts[1:], params, body, headers))
        return self._not_found()

    # ------------------------------------------------------------------ composite

    def _composite(self, method: str, version: str, body: bytes, headers: Any) -> _Response:
        """POST /composite: up to 25 subrequests, at most 5 of them queries or collections, billed as
        one API call (Salesforce REST API: Composite). Only GET subrequests (queries, describes) are served here."""
        if method != "POST":
            return self._method_not_allowed(method, "POST")
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise _api_error(400, "JSON_PARSER_ERROR", "Malformed JSON in composite request") from None
        subs = payload.get("compositeRequest") if isinstance(payload, dict) else None
        if not isinstance(subs, list) or not subs:
            raise _api_error(400, "INVALID_INPUT", "compositeRequest must be a non-empty list")
        if len(subs) > 25:
            raise _api_error(400, "LIMIT_EXCEEDED", "Composite requests may contain at most 25 subrequests")
        heavy = sum(1 for sr in subs if isinstance(sr, dict)
                    and ("/query" in str(sr.get("url", "")) or "/composite/sobjects" in str(sr.get("url", ""))))
        if heavy > 5:
            raise _api_error(400, "LIMIT_EXCEEDED",
                             "Composite requests may contain at most 5 query or sObject Collections subrequests")
        out: list[dict[str, Any]] = []
        for sr in subs:
            ref = sr.get("referenceId") if isinstance(sr, dict) else None
            url = str(sr.get("url", "")) if isinstance(sr, dict) else ""
            sub_method = str(sr.get("method", "GET")).upper() if isinstance(sr, dict) else "GET"
            path, _, query = url.partition("?")
            prefix = f"/services/data/v{version}/"
            if sub_method != "GET" or not path.startswith(prefix):
                resp_status, resp_body = 400, [{"errorCode": "INVALID_INPUT",
                                                "message": "only GET subrequests of this API version are supported"}]
            else:
                sub_parts = [unquote(p) for p in path[len(prefix):].strip("/").split("/")]
                sub_params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
                try:
                    resp = self._route("GET", version, sub_parts, sub_params, b"", headers)
                    resp_status, resp_body = resp.status, json.loads(resp.body or b"null")
                except ApiError as exc:
                    resp_status, resp_body = exc.status, exc.body
                except soql.SoqlError as exc:
                    resp_status, resp_body = 400, [{"message": exc.message, "errorCode": exc.error_code}]
            out.append({"body": resp_body, "httpHeaders": {}, "httpStatusCode": resp_status, "referenceId": ref})
        return _json_response(200, {"compositeResponse": out})

    # ------------------------------------------------------------------ sobjects

    def _sobjects(
        self, method: str, version: str, parts: list[str], params: dict[str, str], body: bytes
    ) -> _Response:
        org = self.org
        if not parts:
            if method != "GET":
                return self._method_not_allowed(method, "GET")
            return _json_response(200, org.describe_global(version))
        sobject = org.sobject_name(parts[0])
        if sobject is None:
            return self._not_found()
        if len(parts) == 1:
            if method == "GET":
                return _json_response(
                    200, {"objectDescribe": org._describe_summary(sobject, version), "recentItems": []}
                )
            if method == "POST":
                op = org.json_op("create", sobject, self._json_body(body))
                outcome = org.apply_ops([op], all_or_none=True)[0]
                if not outcome.success:
                    return _json_response(400, _to_rest_errors(outcome.errors))
                return _json_response(201, {"id": outcome.id, "success": True, "errors": []})
            return self._method_not_allowed(method, "GET,POST")
        if len(parts) == 2 and parts[1] == "describe":
            if method != "GET":
                return self._method_not_allowed(method, "GET")
            return _json_response(200, org.describe(sobject, version))
        if len(parts) == 2:
            return self._record(method, version, sobject, parts[1], params, body)
        if len(parts) == 3:
            return self._by_external_id(method, version, sobject, parts[1], parts[2], params, body)
        return self._not_found()

    def _record_json(
        self, sobject: str, rec: dict[str, Any], version: str, fields: str | None
    ) -> dict[str, Any]:
        org = self.org
        out: dict[str, Any] = {
            "attributes": {
                "type": sobject,
                "url": f"/services/data/v{version}/sobjects/{sobject}/{rec['Id']}",
            }
        }
        names = [name for name, fd in org.schema[sobject].items() if fd.visible]
        if fields:
            names = []
            for raw in fields.split(","):
                fd = org.field_def(sobject, raw.strip())
                if fd is None:
                    raise _api_error(
                        400,
                        "INVALID_FIELD",
                        f"No such column '{raw.strip()}' on entity '{sobject}'. "
                        "If you are attempting to use a custom field, be sure to append the '__c' "
                        "after the custom field name. Please reference your WSDL or the describe "
                        "call for the appropriate names.",
                    )
                names.append(fd.name)
        view = org._view(sobject, rec)
        out.update({name: view[name] for name in names})
        return out

    def _record(
        self, method: str, version: str, sobject: str, raw_id: str, params: dict[str, str], body: bytes
    ) -> _Response:
        org = self.org
        rid = sfids.normalize_id(raw_id)
        if rid is None or rid[:3] != org.prefix_of(sobject):
            if rid is None and method in ("GET", "PATCH", "DELETE"):
                raise _api_error(
                    404,
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {raw_id}",
                )
            return self._not_found()
        with org._lock:
            _t, rec, dead = org._find(rid)
            if dead:
                raise _api_error(404, "ENTITY_IS_DELETED", "entity is deleted")
            if rec is None:
                return self._not_found()
            if method == "GET":
                return _json_response(200, self._record_json(sobject, rec, version, params.get("fields")))
            if method == "PATCH":
                op = org.json_op("update", sobject, self._json_body(body))
                op.record_id = rid
                outcome = org.apply_ops([op], all_or_none=True)[0]
                if not outcome.success:
                    return _json_response(400, _to_rest_errors(outcome.errors))
                return _Response(204)
            if method == "DELETE":
                outcome = org.apply_ops([_WriteOp("delete", sobject, record_id=rid)], all_or_none=True)[0]
                if not outcome.success:
                    return _json_response(400, _to_rest_errors(outcome.errors))
                return _Response(204)
        return self._method_not_allowed(method, "GET,PATCH,DELETE")

    def _by_external_id(
        self,
        method: str,
        version: str,
        sobject: str,
        field_name: str,
        value: str,
        params: dict[str, str],
        body: bytes,
    ) -> _Response:
        org = self.org
        fd = org.field_def(sobject, field_name)
        if fd is None:
            raise _api_error(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field_name}",
            )
        if not (fd.external_id or fd.type == "id"):
            raise _api_error(
                400, "INVALID_FIELD", f"Field {fd.name} is not an External ID or indexed field for {sobject}"
            )
        with org._lock:
            if method == "GET" or method == "DELETE":
                matches = org._lookup(sobject, fd, value)
                if not matches:
                    return self._not_found()
                if len(matches) > 1:
                    return _json_response(
                        300, [f"/services/data/v{version}/sobjects/{sobject}/{m}" for m in matches]
                    )
                if method == "GET":
                    rec = org._data[sobject][matches[0]]
                    return _json_response(200, self._record_json(sobject, rec, version, params.get("fields")))
                outcome = org.apply_ops([_WriteOp("delete", sobject, record_id=matches[0])], True)[0]
                if not outcome.success:
                    return _json_response(400, _to_rest_errors(outcome.errors))
                return _Response(204)
            if method != "PATCH":
                return self._method_not_allowed(method, "GET,PATCH,DELETE")
            payload = self._json_body(body)
            if isinstance(payload, dict) and any(k.lower() == "id" for k in payload) and fd.type != "id":
                raise _api_error(
                    400,
                    "INVALID_FIELD",
                    "Id is not allowed in the request body when upserting by an "
                    f"external ID field ({fd.name})",
                )
            op = org.json_op("upsert", sobject, payload)
            op.ext_field, op.ext_value, op.ext_from_url = fd.name, value, True
            if not org.may_upsert_by(fd):
                raise _api_error(400, "INSUFFICIENT_ACCESS", _NON_UNIQUE_UPSERT)
            if fd.type != "id":
                matches = org._lookup(sobject, fd, value)
                if len(matches) > 1:
                    return _json_response(
                        300, [f"/services/data/v{version}/sobjects/{sobject}/{m}" for m in matches]
                    )
                if not matches and params.get("updateOnly", "").lower() == "true":
                    return self._not_found()
            outcome = org.apply_ops([op], all_or_none=True)[0]
            if not outcome.success:
                return _json_response(400, _to_rest_errors(outcome.errors))
            return _json_response(201 if outcome.created else 200, outcome.as_json(with_created=True))

    # ------------------------------------------------------------------ collections

    def _collection_records(self, payload: Any) -> tuple[list[Any], bool]:
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            raise _api_error(
                400, "JSON_PARSER_ERROR", "The request body must be an object with a 'records' array"
            )
        records = payload["records"]
        if len(records) > COLLECTION_LIMIT:
            raise _api_error(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        all_or_none = payload.get("allOrNone", False)
        if not isinstance(all_or_none, bool):
            raise _api_error(400, "JSON_PARSER_ERROR", "allOrNone must be a boolean")
        return records, all_or_none

    def _typed_op(self, kind: str, raw: Any, fixed_type: str | None = None) -> _WriteOp:
        org = self.org
        if not isinstance(raw, dict):
            raise _api_error(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
        attrs = raw.get("attributes")
        type_name = attrs.get("type") if isinstance(attrs, dict) else None
        if not type_name:
            op = _WriteOp(kind, fixed_type or "")
            op.pre_errors = [_err("INVALID_TYPE", "Must send a concrete entity type.")]
            return op
        sobject = org.sobject_name(str(type_name))
        if sobject is None:
            raise _api_error(400, "INVALID_TYPE", f"sObject type '{type_name}' is not supported.")
        if fixed_type is not None and sobject != fixed_type:
            op = _WriteOp(kind, fixed_type)
            op.pre_errors = [
                _err("INVALID_TYPE", f"Record type {sobject} does not match the request's {fixed_type}")
            ]
            return op
        return org.json_op(kind, sobject, raw)

    def _collections(
        self, method: str, version: str, parts: list[str], params: dict[str, str], body: bytes
    ) -> _Response:
        org = self.org
        if not parts:
            if method == "POST":
                records, all_or_none = self._collection_records(self._json_body(body))
                ops = [self._typed_op("create", r) for r in records]
                for op, raw in zip(ops, records, strict=True):
                    if isinstance(raw, dict) and not op.pre_errors:
                        rid = next((v for k, v in raw.items() if k.lower() == "id"), None)
                        if rid is not None:
                            op.pre_errors = [
                                _err(
                                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                                    "cannot specify Id in an insert call",
                                    ["Id"],
                                )
                            ]
                outcomes = org.apply_ops(ops, all_or_none)
                org._note_written(ops, outcomes)
                return _json_response(200, [o.as_json(with_created=False) for o in outcomes])
            if method == "PATCH":
                records, all_or_none = self._collection_records(self._json_body(body))
                ops = [self._typed_op("update", r) for r in records]
                outcomes = org.apply_ops(ops, all_or_none)
                org._note_written(ops, outcomes)
                return _json_response(200, [o.as_json(with_created=False) for o in outcomes])
            if method == "DELETE":
                ids = [i for i in params.get("ids", "").split(",") if i]
                if not ids:
                    raise _api_error(400, "MISSING_ARGUMENT", "ids parameter is required")
                if len(ids) > COLLECTION_LIMIT:
                    raise _api_error(
                        400,
                        "EXCEEDED_ID_LIMIT",
                        "record limit reached. cannot submit more than 200 records into this call",
                    )
                ops = [_WriteOp("delete", "*", record_id=i) for i in ids]
                outcomes = org.apply_ops(ops, params.get("allOrNone", "false").lower() == "true")
                return _json_response(
                    200,
                    [
                        {"id": o.id or (sfids.normalize_id(i) or i), "success": o.success, "errors": o.errors}
                        for o, i in zip(outcomes, ids, strict=True)
                    ],
                )
            return self._method_not_allowed(method, "POST,PATCH,DELETE")
        sobject = org.sobject_name(parts[0])
        if sobject is None:
            return self._not_found()
        if len(parts) == 1 and method == "GET":
            ids = [i for i in params.get("ids", "").split(",") if i]
            fields = params.get("fields")
            if not ids or not fields:
                raise _api_error(400, "MISSING_ARGUMENT", "ids and fields parameters are required")
            out: list[Any] = []
            with org._lock:
                for raw_id in ids:
                    rid = sfids.normalize_id(raw_id)
                    if rid is None:
                        raise _api_error(400, "MALFORMED_ID", f"malformed id {raw_id}")
                    rec = org._data.get(sobject, {}).get(rid)
                    out.append(self._record_json(sobject, rec, version, fields) if rec else None)
            return _json_response(200, out)
        if len(parts) == 2:
            if method != "PATCH":
                return self._method_not_allowed(method, "PATCH")
            fd = org.field_def(sobject, parts[1])
            if fd is None:
                raise _api_error(
                    400,
                    "INVALID_FIELD",
                    f"Provided external ID field does not exist or is not accessible: {parts[1]}",
                )
            if not fd.external_id:
                raise _api_error(
                    400,
                    "INVALID_FIELD",
                    f"Field {fd.name} is not an External ID or indexed field for {sobject}",
                )
            records, all_or_none = self._collection_records(self._json_body(body))
            ops = []
            for raw in records:
                op = self._typed_op("upsert", raw, fixed_type=sobject)
                op.ext_field = fd.name
                op.ext_value = op.fields.get(fd.name)
                ops.append(op)
            outcomes = org.apply_ops(ops, all_or_none)
            org._note_written(ops, outcomes)
            return _json_response(200, [o.as_json(with_created=True) for o in outcomes])
        return self._not_found()

    # ------------------------------------------------------------------ bulk 2.0

    def _ingest(self, method: str, version: str, parts: list[str], body: bytes) -> _Response:
        org = self.org
        if not parts:
            if method == "POST":
                return _json_response(200, org.create_job(self._json_body(body), version))
            if method == "GET":
                return _json_response(200, org.list_jobs())
            return self._method_not_allowed(method, "GET,POST")
        job_id = parts[0]
        if len(parts) == 1:
            if method == "GET":
                with org._lock:
                    return _json_response(200, org.job(job_id).info())
            if method == "PATCH":
                return _json_response(200, org.set_job_state(job_id, self._json_body(body)))
            if method == "DELETE":
                org.delete_job(job_id)
                return _Response(204)
            return self._method_not_allowed(method, "GET,PATCH,DELETE")
        if len(parts) == 2 and parts[1] == "batches":
            if method != "PUT":
                return self._method_not_allowed(method, "PUT")
            org.upload_job_data(job_id, body)
            return _Response(201, b"", content_type="text/plain")
        if len(parts) == 2 and parts[1] in ("failedResults", "successfulResults", "unprocessedrecords"):
            if method != "GET":
                return self._method_not_allowed(method, "GET")
            text = org.job_results(job_id, parts[1])
            return _Response(200, text.encode("utf-8"), content_type="text/csv")
        return self._not_found()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle + delayed ACK
    # adds ~40 ms to every request.
    disable_nagle_algorithm = True
    server: _TLSServer

    def setup(self) -> None:
        # The TLS handshake happens here, in the per-connection thread, so a slow or broken
        # client cannot stall the accept loop.
        self.request.settimeout(30)
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()
        self.server.track(self.request, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; tests read ``requests_log`` instead."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        body = self._read_body()
        split = urlsplit(self.path)
        path, query = split.path, split.query
        method = self.command
        n = sandbox._log_request(method, path)
        if len(self.path.encode()) > MAX_URI_BYTES:
            self._send(
                method, _json_response(414, [{"errorCode": "URI_TOO_LONG", "message": "URI Too Long"}])
            )
            return
        if len(self.path.encode()) + len(bytes(self.headers)) > MAX_URI_BYTES:
            self._send(
                method,
                _json_response(
                    431,
                    [
                        {
                            "errorCode": "REQUEST_HEADER_FIELDS_TOO_LARGE",
                            "message": "Request Header Fields Too Large",
                        }
                    ],
                ),
            )
            return
        try:
            response = self._respond(sandbox, n, method, path, query, body)
        except Exception:  # any bug must surface as a 500, like a real server, and be recorded
            sandbox.unexpected_errors.append(traceback.format_exc())
            response = _json_response(
                500,
                [
                    {
                        "errorCode": "UNKNOWN_EXCEPTION",
                        "message": "An unexpected error occurred. Please include this ErrorId "
                        f"if you contact support: {secrets.randbelow(10**9)}-0",
                    }
                ],
            )
        if response is None:
            self.close_connection = True
            return
        self._send(method, response)

    def _respond(
        self, sandbox: SalesforceSandbox, n: int, method: str, path: str, query: str, body: bytes
    ) -> _Response | None:
        if sandbox.latency_ms:
            time.sleep(sandbox.latency_ms / 1000.0)
        hook = sandbox.faults.on_request
        if hook is not None:
            hook(n, method, path)
        hang = sandbox.faults.hang_for(n)
        if hang and sandbox._stopping.wait(hang):
            return None
        is_api = path.startswith("/services/data")
        target = path + ("?" + unquote_plus(query) if query else "")
        injected = sandbox.faults.injected_for(n, method, target)
        if injected is not None:
            raw = injected.body
            data = raw if isinstance(raw, bytes) else raw.encode() if isinstance(raw, str) else dumps(raw)
            headers = dict(injected.headers)
            if is_api:
                headers.setdefault("Sforce-Limit-Info", sandbox._limit_header())
            ctype = headers.pop("Content-Type", "application/json;charset=UTF-8")
            return _Response(injected.status, data, content_type=ctype, headers=headers)
        if path.rstrip("/") == "/services/oauth2/token":
            return self._oauth(sandbox, method, body)
        if is_api:
            response = sandbox._api.handle(method, path, query, self.headers, body)
            response.headers.setdefault("Sforce-Limit-Info", sandbox._limit_header())
            return response
        return _json_response(
            404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
        )

    def _oauth(self, sandbox: SalesforceSandbox, method: str, body: bytes) -> _Response:
        if method != "POST":
            return _json_response(
                405, {"error": "invalid_request", "error_description": "must use HTTP POST"}
            )
        form = {
            k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
        }
        basic: tuple[str, str] | None = None
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:].strip()).decode().partition(":")
                basic = (unquote_plus(user), unquote_plus(pw))
            except (ValueError, binascii.Error):
                return _json_response(
                    400, {"error": "invalid_client", "error_description": "invalid client credentials"}
                )
        status, payload = sandbox.org.oauth_token(form, basic, sandbox.instance_url)
        return _json_response(status, payload)

    def _send(self, method: str, response: _Response) -> None:
        self.send_response(response.status)
        if response.status != 204:
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD" and response.status != 204 and response.body:
            self.wfile.write(response.body)

    do_GET = _dispatch
    do_POST = _dispatch
    do_PATCH = _dispatch
    do_PUT = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sandbox: SalesforceSandbox, context: ssl.SSLContext) -> None:
        self.sandbox = sandbox
        self._context = context
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, kill tests, rejected certs) are expected; stay quiet."""


class SalesforceSandbox:
    """Serves an org over HTTPS on 127.0.0.1 with a trustme-generated CA."""

    def __init__(self, org: SalesforceOrg | None = None, *, latency_ms: float = 0.0) -> None:
        self.org = org if org is not None else SalesforceOrg()
        self.latency_ms = latency_ms
        self.faults = SalesforceFaultPlan()
        self.org.row_lock_hook = self.faults.take_row_lock
        self.requests_log: list[tuple[str, str]] = []
        self.unexpected_errors: list[str] = []
        self.instance_url = ""
        self.ca_path = ""
        self.access_token = ""
        self._log_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self._api = _Api(self)

    def start(self) -> SalesforceSandbox:
        """Bind 127.0.0.1 on a free port and serve HTTPS from a daemon thread."""
        if self._server is not None:
            return self
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self._tmpdir = tempfile.mkdtemp(prefix="sf-sandbox-")
        self.ca_path = f"{self._tmpdir}/ca.pem"
        ca.cert_pem.write_to_path(self.ca_path)
        self._stopping.clear()
        self._server = _TLSServer(self, context)
        port = self._server.server_address[1]
        self.instance_url = f"https://127.0.0.1:{port}"
        self.access_token = self.org.new_access_token()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sf-sandbox-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections, wake hung requests and delete the CA file."""
        server, self._server = self._server, None
        self._stopping.set()
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> SalesforceSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def session(self) -> requests.Session:
        """A requests session that trusts only this sandbox's CA and ignores proxy/CA env vars."""
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca_path
        return s

    def _log_request(self, method: str, path: str) -> int:
        with self._log_lock:
            self.requests_log.append((method, path))
            return len(self.requests_log)

    def _limit_header(self) -> str:
        return f"api-usage={self.org.api_used}/{self.org.daily_api_limit}"
