"""Writing line protocol to InfluxDB through influxdb-client's v2 write API, errors classified.

The bridge needs one distinction from a failed write: could retrying help? ``WriteRejected``:
the server refused the data itself (HTTP 400 invalid, 413 too large, 422 unprocessable, e.g.
a field type conflict); the same bytes will be refused again, so the bridge isolates the
message responsible and dead-letters it. ``WriteFailed``: anything else (connection refused,
timeout, 5xx, 429, also 401/403/404, which are configuration problems an operator fixes): the
bridge keeps the data and retries.
"""

from __future__ import annotations

from typing import Protocol

from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

REJECTED_STATUSES = frozenset({400, 413, 422})


class WriteFailed(Exception):
    """A write that may succeed later; ``retry_after`` (s) if the server asked for a pause."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class WriteRejected(Exception):
    """The server refused these points; writing them again cannot succeed."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Sink(Protocol):
    """Where the bridge writes: ``write()`` returns once the body is stored, or raises WriteFailed
    (try again later) or WriteRejected (the database refused points)."""

    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


class InfluxSink:
    """One InfluxDB 2 bucket, written synchronously: ``write()`` returns once the data is stored."""

    def __init__(
        self, url: str, token: str, org: str, bucket: str, *, timeout_ms: int = 10_000, gzip: bool = False
    ) -> None:
        self.url = url
        self.bucket = bucket
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms, enable_gzip=gzip)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        """Write line protocol (lines joined by ``\\n``, ns time stamps)."""
        try:
            self._write_api.write(bucket=self.bucket, record=body, write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as exc:
            message = f"HTTP {exc.status}: {getattr(exc, 'message', None) or exc.reason}"
            if exc.status in REJECTED_STATUSES:
                raise WriteRejected(message, exc.status) from None
            raise WriteFailed(message, exc.status, _seconds(getattr(exc, "retry_after", None))) from None
        except Exception as exc:  # connection refused, reset, timeout...: urllib3 and OS errors
            raise WriteFailed(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._client.close()


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
