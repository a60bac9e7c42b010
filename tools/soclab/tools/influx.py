"""How the operator's commands find, read and write the lab's InfluxDB, as the bridge does.

Settings come from a TOML file (``--config``, its ``[influx]`` table), then ``SOCLAB_INFLUX_*``
environment variables, then command-line flags; the token only from ``SOCLAB_INFLUX_TOKEN`` or
``token_file`` (``--influx-token-file``), never from the file itself.

One query path for every server the lab has: **InfluxQL** over the v1-compatible ``/query``
endpoint, with ``Authorization: Token <token>``. InfluxDB 2 serves it through the bucket's DBRP
mapping (``compose/influxdb/init-tokens.sh`` maps database = bucket, policy ``autogen``, the
same mapping Grafana's dashboards use); InfluxDB 1.8+ takes ``Token user:password``; the tests'
InfluxDB 1.6.7 gets the same request through the development shim (``soclab.dev.localservices
.v2shim``), which translates it as 1.8 does. Flux would not run on 1.x, and the dashboards are
InfluxQL already. Writes (the reference SoC written back) go through influxdb-client's v2 write
API, the bridge's path.

Large ranges are read in time windows with InfluxQL's chunked responses, so neither the server
nor this process holds one huge JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from soclab.wire.settings import ConfigError, read_toml, section

_FLAGS = {  # flag (argparse dest) -> [influx] key
    "influx_url": "url",
    "influx_org": "org",
    "influx_bucket": "bucket",
    "influx_token_file": "token_file",
    "influx_tls_ca": "tls_ca",
}
_REFUSED = {"token": "secrets are not read from the config file; set SOCLAB_INFLUX_TOKEN or token_file"}


class InfluxError(RuntimeError):
    """The server could not be reached, or it refused or failed a query or a write."""


@dataclass(frozen=True)
class InfluxSettings:
    url: str = "http://localhost:8086"
    org: str = ""
    bucket: str = ""  # InfluxDB 2: the bucket; 1.x: "db" or "db/rp"
    database: str = ""  # InfluxQL database; default: the bucket's name (its DBRP mapping)
    retention_policy: str = ""  # default: the bucket's "/rp" part, else the database's default
    token_file: str = ""
    tls_ca: str = ""  # CA file for an https URL signed by the lab's own CA (default: the system's)
    timeout_s: float = 60.0
    window_s: float = 6 * 3600.0  # a long range is read in windows of this length
    token: str = field(default="", repr=False)  # filled in by with_token()

    def with_token(self, env: dict[str, str], variable: str = "SOCLAB_INFLUX_TOKEN") -> InfluxSettings:
        from_env = env.get(variable, "")
        if from_env and self.token_file:
            raise ConfigError(f"{variable} and [influx] token_file are both set: set only one")
        token = from_env
        if self.token_file:
            try:
                token = Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"[influx] token_file {self.token_file!r}: {exc.strerror}") from None
        return dataclasses.replace(self, token=token)

    def check(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"[influx] url must start with http:// or https://, got {self.url!r}")
        if not self.bucket and not self.database:
            raise ConfigError("[influx] bucket (or database) is required")
        if self.tls_ca and not Path(self.tls_ca).is_file():
            raise ConfigError(f"[influx] tls_ca {self.tls_ca!r} is not a file")
        if self.timeout_s <= 0 or self.window_s <= 0:
            raise ConfigError("[influx] timeout_s and window_s must be positive")

    @property
    def db(self) -> str:
        return self.database or self.bucket.partition("/")[0]

    @property
    def rp(self) -> str:
        return self.retention_policy or self.bucket.partition("/")[2]


def add_influx_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("database (over --config [influx] and SOCLAB_INFLUX_* variables)")
    if not any("--config" in action.option_strings for action in parser._actions):
        group.add_argument("--config", help="TOML file with an [influx] table (url, org, bucket, token_file)")
    group.add_argument("--influx-url", help="InfluxDB URL (default http://localhost:8086)")
    group.add_argument("--influx-org", help="organisation (InfluxDB 2)")
    group.add_argument("--influx-bucket", help="bucket (InfluxDB 2) or db[/rp] (1.x)")
    group.add_argument("--influx-token-file", help="file holding the token (or SOCLAB_INFLUX_TOKEN)")
    group.add_argument("--influx-tls-ca", help="CA certificate for an https URL (default: the system's CAs)")


def influx_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> InfluxSettings:
    """The database settings these arguments, the environment and the config file give; ConfigError."""
    env = dict(os.environ if env is None else env)
    raw = read_toml(args.config) if getattr(args, "config", None) else {}
    settings: InfluxSettings = section(
        "influx", InfluxSettings, raw.get("influx", {}), env, "SOCLAB_", refused=_REFUSED
    )
    flags = {
        key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None
    }
    settings = dataclasses.replace(settings, **flags).with_token(env)
    settings.check()
    return settings


class InfluxClient:
    """InfluxQL queries and line-protocol writes against one database (bucket)."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self._http = urllib3.PoolManager(
            ca_certs=settings.tls_ca or None,
            num_pools=1,
            maxsize=2,
            retries=urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.5),
            timeout=urllib3.Timeout(connect=10.0, read=settings.timeout_s),
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.settings.token}"} if self.settings.token else {}

    def query(self, q: str, *, chunk_size: int = 10_000) -> Iterator[dict[str, Any]]:
        """Every series of the answer (``name``, ``tags``, ``columns``, ``values``; times in ns),
        as it arrives in chunks; a long answer comes as several pieces of the same series."""
        fields = {
            "q": q,
            "db": self.settings.db,
            "epoch": "ns",
            "chunked": "true",
            "chunk_size": str(chunk_size),
        }
        if self.settings.rp:
            fields["rp"] = self.settings.rp
        url = f"{self.settings.url.rstrip('/')}/query"
        try:
            response = self._http.request_encode_body(
                "POST",
                url,
                fields=fields,
                headers=self._headers(),
                encode_multipart=False,
                preload_content=False,  # type: ignore[arg-type]  # urllib3's urlopen_kw is typed str
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxError(f"InfluxDB at {self.settings.url} unreachable: {exc}") from None
        try:
            if response.status != 200:
                raise InfluxError(f"{q!r}: HTTP {response.status}: {_error_text(response.read())}")
            for line in _lines(response):
                try:
                    body = json.loads(line)
                except ValueError:
                    raise InfluxError(f"{q!r}: not JSON from the server: {line[:200]!r}") from None
                if "error" in body:
                    raise InfluxError(f"{q!r}: {body['error']}")
                for result in body.get("results", []):
                    if "error" in result:
                        raise InfluxError(f"{q!r}: {result['error']}")
                    yield from result.get("series", [])
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxError(f"InfluxDB at {self.settings.url}: answer cut: {exc}") from None
        finally:
            response.release_conn()

    def write_frame(self, frame: Any, measurement: str, tags: list[str]) -> int:
        """Write a pandas DataFrame indexed by time (tz-aware) with influxdb-client; the points' count."""
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        bucket = self.settings.bucket or "/".join(filter(None, (self.settings.db, self.settings.rp)))
        timeout_ms = int(self.settings.timeout_s * 1000)
        with InfluxDBClient(
            url=self.settings.url,
            token=self.settings.token,
            org=self.settings.org or "-",
            timeout=timeout_ms,
            ssl_ca_cert=self.settings.tls_ca or None,
        ) as client:
            api = client.write_api(write_options=SYNCHRONOUS)
            try:
                for start in range(0, len(frame), 5000):
                    api.write(
                        bucket=bucket,
                        record=frame.iloc[start : start + 5000],
                        data_frame_measurement_name=measurement,
                        data_frame_tag_columns=tags,
                        write_precision=WritePrecision.NS,
                    )
            except ApiException as exc:
                raise InfluxError(
                    f"writing {measurement}: HTTP {exc.status}: {exc.body or exc.reason}"
                ) from None
            except urllib3.exceptions.HTTPError as exc:
                raise InfluxError(f"writing {measurement}: {exc}") from None
        return len(frame)

    def close(self) -> None:
        self._http.clear()


def _lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The chunked answer's JSON documents, one a line."""
    pending = b""
    for piece in response.stream(1 << 16):
        pending += piece
        *whole, pending = pending.split(b"\n")
        yield from (line for line in whole if line.strip())
    if pending.strip():
        yield pending


def _error_text(body: bytes) -> str:
    try:
        document = json.loads(body)
        return str(document.get("error") or document.get("message") or document)
    except ValueError:
        return body.decode("utf-8", errors="replace").strip()[:300]


def quote_ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal, single-quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


__all__ = [
    "ConfigError",
    "InfluxClient",
    "InfluxError",
    "InfluxSettings",
    "add_influx_arguments",
    "influx_settings",
    "quote_ident",
    "quote_string",
]
