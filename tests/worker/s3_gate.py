"""A checking HTTP front for moto's S3 server: verifies presigned GET URLs, then forwards.

moto accepts any presigned URL (it checks neither the signature nor the expiry), so on its
own it cannot tell a correct URL from a wrong one. Real stores (AWS, MinIO) check both.
This gate does what they do for query-string SigV4 (AWS "Authenticating Requests: Using
Query Parameters"): recompute the signature from the request as received, including its
Host header, compare, check X-Amz-Date + X-Amz-Expires against its clock, and only then
pass the request to moto. Written from the spec, independently of botocore's signer.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from calendar import timegm
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

_UNRESERVED = "-_.~"


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class PresignedGate:
    """Serves ``GET``/``HEAD`` for presigned URLs on 127.0.0.1, forwarding valid ones upstream.

    ``clock_offset_s`` shifts the gate's clock, standing in for the passage of time.
    ``refusals`` records the reason for every refused request.
    """

    def __init__(self, upstream: str, secrets: Mapping[str, str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.secrets = dict(secrets)
        self.clock_offset_s = 0.0
        self.refusals: list[str] = []
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate._handle(self)

            def do_HEAD(self) -> None:
                gate._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def check(self, method: str, raw_path: str, headers: Mapping[str, str]) -> str | None:
        """None if the presigned request is valid now, else the reason it is refused."""
        split = urlsplit(raw_path)
        params = parse_qsl(split.query, keep_blank_values=True)
        query = dict(params)
        if query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            return "AccessDenied: not a SigV4 presigned request"
        try:
            access_key, date, region, service, terminator = query["X-Amz-Credential"].split("/")
            amz_date = query["X-Amz-Date"]
            expires = int(query["X-Amz-Expires"])
            signed_headers = query["X-Amz-SignedHeaders"].split(";")
            signature = query["X-Amz-Signature"]
        except (KeyError, ValueError):
            return "AuthorizationQueryParametersError: missing or malformed X-Amz-* parameter"
        if access_key not in self.secrets:
            return "InvalidAccessKeyId"
        if "host" not in signed_headers or terminator != "aws4_request":
            return "AuthorizationQueryParametersError: host must be signed"
        canonical_query = "&".join(
            f"{quote(k, safe=_UNRESERVED)}={quote(v, safe=_UNRESERVED)}"
            for k, v in sorted(params)
            if k != "X-Amz-Signature"
        )
        lower = {k.lower(): v for k, v in headers.items()}
        canonical_headers = "".join(
            f"{name}:{lower.get(name, '').strip()}\n" for name in signed_headers
        )
        canonical_request = "\n".join(
            [
                method,
                split.path,
                canonical_query,
                canonical_headers,
                ";".join(signed_headers),
                "UNSIGNED-PAYLOAD",
            ]
        )
        scope = f"{date}/{region}/{service}/aws4_request"
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        key = _signing_key(self.secrets[access_key], date, region, service)
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return "SignatureDoesNotMatch"
        signed_at = timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        if time.time() + self.clock_offset_s > signed_at + expires:
            return "AccessDenied: Request has expired"
        return None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        reason = self.check(request.command, request.path, dict(request.headers.items()))
        if reason is not None:
            self.refusals.append(reason)
            body = f"<Error><Code>{reason.split(':')[0]}</Code></Error>".encode()
            request.send_response(403)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(body)
            return
        upstream = httpx.request(request.command, self.upstream + request.path, timeout=10)
        request.send_response(upstream.status_code)
        for name in ("Content-Type", "Content-Length", "ETag", "Last-Modified"):
            if name in upstream.headers:
                request.send_header(name, upstream.headers[name])
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(upstream.content)
