"""Scripted failures for both stand-ins: answer a request with an injected response, stall it, or (Salesforce)
fail a write on a locked row. Each stand-in numbers its requests from 1 in arrival order."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import sfids

__all__ = ["FaultPlan", "Injected", "SalesforceFaultPlan"]


@dataclass(frozen=True)
class Injected:
    """A response sent instead of handling the request. A dict or list body is sent as JSON, str or bytes as
    they are; None lets the stand-in choose (Stripe: its generic error for the status)."""

    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class _MatchRule:
    method: str
    pattern: re.Pattern[str]
    response: Injected
    times: int


@dataclass
class _RowLock:
    sobject: str
    key: str
    times: int


class FaultPlan:
    """Request faults shared by both stand-ins. ``on_request(n, method, path)`` is called before each request
    is handled (tests use it to act at an exact point of a run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_nth: dict[int, Injected] = {}
        self._rules: list[_MatchRule] = []
        self._hangs: dict[int, float] = {}
        self.on_request: Callable[[int, str, str], None] | None = None

    def fail_request(self, nth: int, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        """Answer request number ``nth`` with ``status`` and ``body`` instead of handling it."""
        with self._lock:
            self._by_nth[nth] = Injected(status, body, dict(headers or {}))

    def fail_matching(self, method: str, path_regex: str, status: int, body: Any = None, *, times: int = 1,
                      headers: Mapping[str, str] | None = None) -> None:
        """Answer the next ``times`` requests whose method matches (``"*"``: any) and whose target matches
        ``path_regex`` (``re.search``) with ``status`` and ``body``. The target is the path; the Salesforce
        stand-in appends ``?`` and the decoded query string, if any."""
        with self._lock:
            self._rules.append(_MatchRule(method.upper(), re.compile(path_regex),
                                          Injected(status, body, dict(headers or {})), times))

    def hang_request(self, nth: int, seconds: float) -> None:
        """Stall request number ``nth`` for ``seconds`` before answering (to trip client timeouts)."""
        with self._lock:
            self._hangs[nth] = seconds

    def clear(self) -> None:
        """Forget every scripted fault and the hook."""
        with self._lock:
            self._by_nth.clear()
            self._rules.clear()
            self._hangs.clear()
            self.on_request = None

    def hang_for(self, n: int) -> float:
        """Seconds to stall request ``n`` (0: none); a hang fires once."""
        with self._lock:
            return self._hangs.pop(n, 0.0)

    def injected_for(self, n: int, method: str, target: str) -> Injected | None:
        """The response scripted for request ``n``, by number first, then by the first matching rule."""
        with self._lock:
            if n in self._by_nth:
                return self._by_nth.pop(n)
            for rule in self._rules:
                if rule.times > 0 and rule.method in (method, "*") and rule.pattern.search(target):
                    rule.times -= 1
                    return rule.response
            return None


class SalesforceFaultPlan(FaultPlan):
    """The request faults, plus what only Salesforce does: per-record row locks and the concurrent
    long-running request limit.

    Request numbers count every HTTP request the stand-in receives since it started, OAuth token requests
    included: ``len(sandbox.requests_log)`` is the last one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._row_locks: list[_RowLock] = []

    def concurrent_long_requests(self, method: str, path_regex: str, times: int = 1) -> None:
        """The org is at its cap of concurrent long-running requests: Salesforce answers 403
        REQUEST_LIMIT_EXCEEDED with the ConcurrentPerOrgLongTxn message, which clears by itself once the other
        requests finish, unlike the daily limit (Salesforce REST API Developer Guide: Status Codes and Error
        Responses; Salesforce Developer Limits: API Request Limits and Allocations)."""
        self.fail_matching(method, path_regex, 403,
                           [{"message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                             "errorCode": "REQUEST_LIMIT_EXCEEDED"}], times=times)

    def lock_rows(self, sobject: str, key: str, times: int = 1) -> None:
        """The next ``times`` writes touching that record (its Id or an external-id value) fail per record
        with UNABLE_TO_LOCK_ROW."""
        with self._lock:
            self._row_locks.append(_RowLock(sobject, key, times))

    def clear(self) -> None:
        """Forget every scripted fault, the row locks and the hook."""
        super().clear()
        with self._lock:
            self._row_locks.clear()

    def take_row_lock(self, sobject: str, keys: list[str], _record_id: str) -> bool:
        """True when a scripted row lock covers one of ``keys`` of ``sobject`` (and uses it up once)."""
        with self._lock:
            normalized = {sfids.normalize_id(k) or k for k in keys}
            for lock in self._row_locks:
                if lock.times <= 0 or lock.sobject.lower() != sobject.lower():
                    continue
                if (sfids.normalize_id(lock.key) or lock.key) in normalized:
                    lock.times -= 1
                    return True
            return False
