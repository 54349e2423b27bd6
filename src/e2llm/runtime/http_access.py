"""Who may talk to the API, and what a client is told when the server fails: one ASGI middleware.

For every HTTP request, in this order:
- a request id (`x-request-id` on every response; the id of the completion is built from it);
- the `Host` header must name this server (`allowed_hosts`; 400 `invalid_host` otherwise). A web
  page whose domain re-binds to 127.0.0.1 (DNS rebinding) sends its own name there, so the check
  keeps web pages away from a server on loopback even without an API key;
- the API key, where one is set (401), except on `public_paths`;
- a POST must say `Content-Type: application/json` (415): a web page can send a cross-site POST
  without asking first (CORS) only as a form or as text/plain, never as JSON;
- an exception nothing else answered becomes a generic 500 with the request id, and its
  traceback goes to the server log, never to the client.

`allowed_hosts_for` derives the allowed names from the bind address: loopback names for a
loopback bind, the address itself for a specific one, and for a wildcard bind (0.0.0.0, ::) any
IP address (re-binding needs a name) plus this machine's own names. `--allowed-hosts` replaces
them (`*`: any Host, e.g. behind a proxy that checks it).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from e2llm.runtime.openai_protocol import ApiError, internal_error

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_IP = "<any IP address>"  # in an allowed set: a Host that is an IP literal passes
REQUEST_ID_HEADER = "x-request-id"
_INVALID = "invalid_request_error"


def allowed_hosts_for(bind: str, given: Sequence[str] | None) -> frozenset[str] | None:
    """The Host names a server bound to `bind` accepts (None: any); `given` replaces them."""
    if given:
        names = {h.strip().lower() for h in given if h.strip()}
        return None if "*" in names else frozenset(names)
    bind = bind.strip("[]").lower()
    if bind == "localhost":
        return LOOPBACK_HOSTS
    try:
        ip = ipaddress.ip_address(bind)
    except ValueError:
        return frozenset({bind})  # bound to a name: that name
    if ip.is_loopback:
        return LOOPBACK_HOSTS | {bind}
    if ip.is_unspecified:
        names = {socket.gethostname().lower(), socket.getfqdn().lower()}
        return LOOPBACK_HOSTS | {ANY_IP} | names
    return frozenset({bind})


def host_name(header: str) -> str:
    """The name part of a Host header: no port, no IPv6 brackets, no trailing dot, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def host_allowed(header: str, allowed: Collection[str] | None) -> bool:
    if allowed is None:
        return True
    name = host_name(header)
    if not name:
        return False
    if name in allowed:
        return True
    if ANY_IP in allowed:
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


def is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class AccessRules:
    """ASGI middleware (see module)."""

    def __init__(
        self,
        app: Any,
        api_key: str | None,
        allowed_hosts: frozenset[str] | None,
        public_paths: frozenset[str],
    ):
        self.app = app
        self.api_key = api_key
        self.allowed_hosts = allowed_hosts
        self.public_paths = public_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:24]
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await _send_error(send_with_id, refusal)
            return
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            method, path = scope["method"], scope["path"]
            log.error("request %s: internal error on %s %s", request_id, method, path, exc_info=exc)
            if not started:
                await _send_error(send_with_id, internal_error(request_id))

    def _refusal(self, scope: Any) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not host_allowed(headers.get("host", ""), self.allowed_hosts):
            return ApiError(400, "invalid Host header for this server", _INVALID, None, "invalid_host")
        if self.api_key and scope["path"] not in self.public_paths:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return ApiError(401, "invalid or missing API key", _INVALID, None, "invalid_api_key")
        if scope["method"] == "POST" and not is_json(headers.get("content-type", "")):
            message = "the request body must be JSON, sent with Content-Type: application/json"
            return ApiError(415, message, _INVALID, None, "unsupported_media_type")
        return None


async def _send_error(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
