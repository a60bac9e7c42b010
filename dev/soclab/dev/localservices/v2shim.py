"""The InfluxDB 2 write API in front of an InfluxDB 1.x server: a small HTTP translation proxy.

Why: production runs InfluxDB 2.7 and the bridge writes with influxdb-client's v2 ``WriteApi``
(``POST /api/v2/write``, line protocol, ns precision, ``Authorization: Token ...``). The only
InfluxDB these machines can install is Debian's 1.6.7, which has no v2 API. Rather than giving
the bridge a second, 1.x-only code path that production never runs, this shim serves the v2
write API and forwards to 1.6.7's ``/write``: the bridge's code path, its request bytes and its
error handling are exactly production's; only the server behind them differs. InfluxDB 1.8 and
later ship the same translation natively, and the shim follows their conventions:

- ``bucket=db`` or ``bucket=db/rp`` selects database and retention policy; ``org`` is ignored;
- ``Authorization: Token user:password`` carries 1.x credentials (forwarded as HTTP basic auth,
  so they do not appear in URLs); no token or an empty one means no credentials;
- ``precision=ns|us|ms|s`` becomes ``n|u|ms|s``; ``Content-Encoding: gzip`` bodies pass through;
- 204 stays 204; a 1.x error ``{"error": "..."}`` becomes the v2 form
  ``{"code": "invalid" | "unauthorized" | "not found" | ..., "message": "..."}`` with the same
  HTTP status (1.6.7 answers a missing retention policy with 500 and a field type conflict with
  400 where InfluxDB 2 says 404 and 422; writers must treat 400 and 422 alike, as the bridge does);
- 1.x unreachable: 503 ``{"code": "unavailable"}``, which writers treat as retryable;
- ``GET /ping`` (and ``HEAD``), ``GET /health`` and ``GET /ready`` answer as InfluxDB 2 does,
  so influxdb-client's ``ping()``/``health()``/``ready()`` work;
- ``/query`` (InfluxQL, GET or POST, the v1-compatible endpoint InfluxDB 2 serves through DBRP
  mappings) is passed through with the same ``Token user:password`` translation, so readers
  (``soclab analyse``) use one URL and production's request, as writers do.

What it cannot show: InfluxDB 2's own behaviour (tokens, buckets, its limits). Run it as a thread
(``V2WriteShim``, used by the tests) or as a process
(``python -m soclab.dev.localservices.v2shim --upstream http://127.0.0.1:8086 --port 8087``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import urllib3

from soclab.dev.localservices.ports import LOOPBACK, free_port

log = logging.getLogger("soclab.dev.localservices.v2shim")

PRECISIONS = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
MAX_BODY_BYTES = 64 * 1024 * 1024

# InfluxDB 2's error codes (its API's "Error" object) by HTTP status.
_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request too large",
    422: "unprocessable entity",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
}
_PASSED_HEADERS = ("X-Influxdb-Version", "X-Influxdb-Build", "Retry-After")


def v2_error(status: int, body: bytes) -> dict[str, str]:
    """The v2 error object for a 1.x error response (``{"error": "..."}``, or anything else)."""
    code = _CODES.get(status, "internal error" if status >= 500 else "invalid")
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", errors="replace").strip() or f"HTTP {status}"
    return {"code": code, "message": str(message)}


class _RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.http = urllib3.PoolManager(
            num_pools=1, maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5.0, read=60.0)
        )
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.started = time.time()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections too, so clients see the shim go away."""
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 300  # idle kept-alive connections

    # --- routes -------------------------------------------------------------------------------

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        try:
            body = self._read_body()
            if url.path == "/query":
                self._query(url.query, body)
                return
            if url.path != "/api/v2/write":
                raise _RequestError(404, f"path {url.path} not found")
            self._write(parse_qs(url.query), body)
        except _RequestError as exc:
            self._send_json(exc.status, {"code": _CODES.get(exc.status, "invalid"), "message": exc.message})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/ping":
            self._ping()
        elif path == "/health":
            self._health()
        elif path == "/query":
            try:
                self._query(urlsplit(self.path).query, None)
            except _RequestError as exc:
                self._send_json(
                    exc.status, {"code": _CODES.get(exc.status, "invalid"), "message": exc.message}
                )
        elif path == "/ready":
            up = time.time() - self.server.started
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.server.started))
            self._send_json(200, {"status": "ready", "started": started, "up": f"{up:.0f}s"})
        else:
            self._send_json(404, {"code": "not found", "message": f"path {path} not found"})

    def do_HEAD(self) -> None:
        if urlsplit(self.path).path == "/ping":
            self._ping()
        else:
            self._send(404, b"", {})

    # --- the write translation ----------------------------------------------------------------

    def _write(self, params: dict[str, list[str]], body: bytes) -> None:
        bucket = params.get("bucket", [""])[0]
        if not bucket:
            raise _RequestError(400, "bucket is required")
        precision = params.get("precision", ["ns"])[0]
        if precision not in PRECISIONS:
            raise _RequestError(400, f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        db, _, rp = bucket.partition("/")
        query = {"db": db, "precision": PRECISIONS[precision]}
        if rp:
            query["rp"] = rp
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        credentials = self._credentials()
        if credentials:
            headers.update(urllib3.make_headers(basic_auth=credentials))
        encoding = self.headers.get("Content-Encoding")
        if encoding:
            headers["Content-Encoding"] = encoding
        response = self._upstream("POST", f"/write?{urlencode(query)}", body, headers)
        if response is None:
            return
        passed = self._passed_headers(response)
        if 200 <= response.status < 300:
            self._send(204, b"", passed)
            return
        error = v2_error(response.status, response.data)
        log.info(
            "event=write_rejected status=%d code=%r message=%r",
            response.status,
            error["code"],
            error["message"],
        )
        self._send_json(response.status, error, passed)

    def _query(self, query: str, body: bytes | None) -> None:
        """InfluxQL passed through as it is (1.x answers in the v1 form InfluxDB 2 also uses)."""
        headers = {}
        credentials = self._credentials()
        if credentials:
            headers.update(urllib3.make_headers(basic_auth=credentials))
        if body is not None:
            headers["Content-Type"] = self.headers.get("Content-Type", "application/x-www-form-urlencoded")
        method = "GET" if body is None else "POST"
        response = self._upstream(method, f"/query?{query}" if query else "/query", body, headers)
        if response is None:
            return
        passed = self._passed_headers(response)
        passed["Content-Type"] = response.headers.get("Content-Type", "application/json")
        self._send(response.status, response.data, passed)

    def _credentials(self) -> str | None:
        """``user:password`` from ``Authorization: Token user:password``, or None."""
        value = self.headers.get("Authorization", "").strip()
        if not value:
            return None
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "token":
            raise _RequestError(401, f"authorization scheme {scheme!r} is not supported; use Token")
        token = token.strip()
        if not token:
            return None
        if ":" not in token:
            raise _RequestError(401, "token must be user:password for InfluxDB 1.x")
        return token

    # --- health -------------------------------------------------------------------------------

    def _ping(self) -> None:
        response = self._upstream("GET", "/ping", None, {})
        if response is None:
            return
        self._send(204 if response.status == 204 else 503, b"", self._passed_headers(response))

    def _health(self) -> None:
        try:
            response = self.server.http.request("GET", f"{self.server.upstream}/ping")
        except urllib3.exceptions.HTTPError as exc:
            response, reason = None, str(exc)
        if response is not None and response.status == 204:
            version = response.headers.get("X-Influxdb-Version", "")
            self._send_json(
                200,
                {
                    "name": "influxdb",
                    "message": "ready for queries and writes",
                    "status": "pass",
                    "checks": [],
                    "version": version,
                    "commit": "",
                },
            )
            return
        if response is not None:
            reason = f"upstream /ping answered {response.status}"
        self._send_json(503, {"name": "influxdb", "message": reason, "status": "fail", "checks": []})

    # --- plumbing -----------------------------------------------------------------------------

    def _upstream(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse | None:
        """The upstream's response, or None after answering 503 because it is unreachable."""
        url = f"{self.server.upstream}{path}"
        try:
            return self.server.http.request(method, url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            message = f"InfluxDB 1.x at {self.server.upstream} unreachable: {exc}"
            log.warning("event=upstream_unreachable error=%r", str(exc))
            self._send_json(503, {"code": "unavailable", "message": message})
            return None

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise _RequestError(411, "Content-Length required")
        size = int(length)
        if size > MAX_BODY_BYTES:
            self.close_connection = True
            raise _RequestError(413, f"body of {size} bytes exceeds {MAX_BODY_BYTES}")
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise _RequestError(413, f"body exceeds {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    @staticmethod
    def _passed_headers(response: urllib3.BaseHTTPResponse) -> dict[str, str]:
        return {h: response.headers[h] for h in _PASSED_HEADERS if h in response.headers}

    def _send_json(
        self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        extra = dict(headers or {})
        extra["Content-Type"] = "application/json; charset=utf-8"
        if "code" in document and status >= 400:
            extra["X-Platform-Error-Code"] = document["code"]
        self._send(status, json.dumps(document).encode(), extra)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=request %s", format % args)


class V2WriteShim:
    """``with V2WriteShim(influx.url) as shim:`` the v2 write API at ``shim.url``, in a thread.

    ``stop()`` and ``start()`` again keep the port.
    """

    def __init__(self, upstream: str, *, host: str = LOOPBACK, port: int | None = None) -> None:
        self.upstream = upstream
        self.host = host
        self.port = port or free_port(host)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> V2WriteShim:
        if self._server is not None:
            raise RuntimeError(f"v2 shim at {self.url} is already running")
        self._server = _Server((self.host, self.port), self.upstream)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="v2shim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._server.http.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> V2WriteShim:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"V2WriteShim({self.url} -> {self.upstream})"


def main(argv: list[str] | None = None) -> int:
    """Serve the shim until interrupted."""
    from soclab.wire import logs

    parser = argparse.ArgumentParser(description="InfluxDB 2 write API in front of InfluxDB 1.x")
    parser.add_argument("--upstream", required=True, help="InfluxDB 1.x URL, e.g. http://127.0.0.1:8086")
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8087)
    args = parser.parse_args(argv)
    logs.configure()
    server = _Server((args.host, args.port), args.upstream)
    log.info("event=serving url=http://%s:%d upstream=%s", args.host, args.port, args.upstream)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
