"""etcd's JSON gateway (``POST /v3/kv/range``, ``/v3/kv/txn``; keys and values base64) over the stdlib.

The PyPI etcd3 client no longer imports with today's protobuf, and the
gateway takes any HTTP client: ``http.client`` with one kept-alive
connection per endpoint and thread (a new TCP connection per call cost
about a third of a read on loopback).

Several endpoints are members of one cluster. A call goes to the member that
answered last; a member that refuses the connection, drops it, or answers
that it has no leader is left for the next one, round and round with a short
pause, until the call's deadline. A read is simply sent again. A write is
not: once sent, a write that got no answer may still commit (etcd says
"request timed out" for a proposal it has not yet seen through, and a member
killed after applying a transaction never answers; "leader changed" may
come for a proposal that commits). Such a write, and any write a member
answers with a retryable error, raises OutcomeUnknown, and the caller reads
again to see whether it landed: every store write is a compare-and-swap, so
sending it again blindly could never give a brick twice, but could report a
lost race for a write that won.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bbctl.state.base import StateError

# gRPC codes the gateway passes on that mean "try again, maybe elsewhere": DEADLINE_EXCEEDED,
# UNAVAILABLE (no leader, leader changed, request timed out, member stopping).
RETRYABLE_CODES = frozenset({4, 14})
PAUSES = (0.02, 0.05, 0.1, 0.2)  # seconds between rounds over all endpoints, then 0.2 s each


class OutcomeUnknown(StateError):
    """A write was sent and no answer came back: it may or may not have committed."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def prefix_end(prefix: str) -> str:
    """The range_end that makes a range cover every key starting with prefix."""
    raw = prefix.encode()
    return b64(raw[:-1] + bytes([raw[-1] + 1]))


def kvs(range_response: dict[str, Any]) -> list[KeyValue]:
    # The gateway omits zero-valued fields: no "kvs" means no keys.
    return [KeyValue(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                     int(kv.get("mod_revision", 0)))
            for kv in range_response.get("kvs", [])]


def split_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """``http://a:2379,http://b:2379`` or a list: the members' client URLs, without trailing '/'."""
    listed = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    cleaned = [e.strip().rstrip("/") for e in listed if e.strip()]
    for endpoint in cleaned:
        if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).hostname:
            raise StateError(f"etcd endpoint {endpoint!r}: write it as http://HOST:PORT (or https://)")
    if not cleaned:
        raise StateError("no etcd endpoint given: write http://HOST:PORT, several separated by commas")
    return cleaned


class Gateway:
    """Calls to one etcd cluster through any of its members."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float) -> None:
        self.endpoints = split_endpoints(endpoints)
        self.timeout = timeout
        self._preferred = 0  # the member that answered last
        self._local = threading.local()

    def call(self, path: str, body: dict[str, Any], *, write: bool) -> dict[str, Any]:
        """The gateway's answer; StateError when no member answers within the timeout.

        write: OutcomeUnknown instead of a resend when the request may have reached etcd.
        """
        payload = json.dumps(body).encode()
        deadline = time.monotonic() + self.timeout
        failures: list[str] = []
        for round_ in itertools.count():
            for offset in range(len(self.endpoints)):
                index = (self._preferred + offset) % len(self.endpoints)
                answer, trouble = self._try(index, path, payload, write=write)
                if trouble is None:
                    self._preferred = index
                    return answer
                failures.append(f"{self.endpoints[index]}: {trouble}")
                if time.monotonic() > deadline:
                    raise StateError(f"etcd is unreachable ({'; '.join(failures[-len(self.endpoints):])})")
            time.sleep(PAUSES[min(round_, len(PAUSES) - 1)])
        raise AssertionError("itertools.count() ended")

    def _try(self, index: int, path: str, payload: bytes, *, write: bool) -> tuple[dict[str, Any], str | None]:
        """One request to one member: (answer, None), or ({}, why it should go elsewhere)."""
        endpoint = self.endpoints[index]
        connection = self._connection(endpoint)
        sent = False
        try:
            connection.request("POST", f"{urlsplit(endpoint).path}{path}", body=payload,
                               headers={"Content-Type": "application/json"})
            sent = True
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(endpoint)
            self._preferred = (index + 1) % len(self.endpoints)
            # A kept-alive connection the member closed while idle fails on send: nothing reached etcd.
            if write and sent:
                raise OutcomeUnknown(f"etcd at {endpoint} took a write and gave no answer ({exc!r}); "
                                     "it may have committed") from exc
            return {}, repr(exc)
        if response.status == 200:
            return json.loads(data), None
        detail = _error(data)
        if detail.get("code") in RETRYABLE_CODES or response.status in (502, 503, 504):
            self._preferred = (index + 1) % len(self.endpoints)
            message = str(detail.get("error") or detail.get("message") or response.reason)
            # "request timed out", "leader changed": proposed, maybe committed; "no leader": maybe not,
            # but telling them apart by etcd's wording is not worth a brick given twice.
            if write:
                raise OutcomeUnknown(f"etcd at {endpoint}: {message}; the write may have committed")
            return {}, message
        text = detail.get("error") or detail.get("message") or data.decode(errors="replace").strip()
        raise StateError(f"etcd at {endpoint} refused {path}: {text or response.reason}")

    def _connection(self, endpoint: str) -> http.client.HTTPConnection:
        # A connection belongs to one thread, and never crosses fork(): a child starts its own.
        if getattr(self._local, "pid", None) != os.getpid():
            self._local.pid, self._local.connections = os.getpid(), {}
        connections: dict[str, http.client.HTTPConnection] = self._local.connections
        if endpoint not in connections:
            parts = urlsplit(endpoint)
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            connections[endpoint] = kind(parts.hostname or "", parts.port, timeout=self.timeout)
        return connections[endpoint]

    def _drop(self, endpoint: str) -> None:
        connection = self._local.connections.pop(endpoint, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close this thread's connections."""
        if getattr(self._local, "pid", None) == os.getpid():
            for endpoint in list(self._local.connections):
                self._drop(endpoint)


def _error(data: bytes) -> dict[str, Any]:
    try:
        detail = json.loads(data)
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}
