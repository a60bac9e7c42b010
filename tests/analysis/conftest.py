"""Fixtures of the analysis tests: the lab's 2021 recording stored through the whole pipeline.

``recorded``: once per session, the recording (soclab.dev.data.RECORDING) replayed by ``soclab
replay`` (10 samples a message) -> Mosquitto -> the bridge -> InfluxDB 1.6.7, as in
tests/server/test_dashboards.py, into a database of its own; the analysis reads it back through
the v2 shim's ``/query``, as it would read an InfluxDB 2.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from analysiskit import NODE, SITE, Recorded

from soclab.cloud.bridge import Bridge, BridgeConfig, InfluxConfig, MqttConfig
from soclab.dev.data import RECORDING
from soclab.dev.localservices import InfluxDB1, Mosquitto, V2WriteShim
from soclab.tools import replay
from soclab.tools.influx import InfluxSettings

WAIT_S = 60.0


@pytest.fixture(scope="session")
def recorded(
    tmp_path_factory: pytest.TempPathFactory, _influx_server: tuple[InfluxDB1, V2WriteShim]
) -> Iterator[Recorded]:
    server, shim = _influx_server
    db = "analysis_recording"
    server.create_database(db)
    recording = replay.read_grafana_csv(RECORDING)
    with Mosquitto(tmp_path_factory.mktemp("analysis-mosquitto")) as broker:
        config = BridgeConfig(
            mqtt=MqttConfig(host=broker.host, port=broker.port),
            influx=InfluxConfig(url=shim.url, org="soclab", bucket=db, token="unused:unused"),
            id="analysis-rec",
            site=SITE,
        )
        bridge = Bridge(config).start()
        try:
            bridge.wait_subscribed(WAIT_S)
            argv = [str(RECORDING), "--site", SITE, "--node", NODE, "--samples-per-message", "10"]
            assert replay.main([*argv, "--host", broker.host, "--port", str(broker.port)]) == 0
            total = sum(len(s) for s in recording.samples.values())
            influx = InfluxSettings(url=shim.url, bucket=db, token="unused:unused")
            first = min(s[0].t_ns for s in recording.samples.values())
            last = max(s[-1].t_ns for s in recording.samples.values())
            filled = Recorded(server, influx, recording, first, last)
            deadline = time.monotonic() + WAIT_S
            q = f"SELECT count(seq) FROM labjack, mppt, eload WHERE node = '{NODE}'"
            while (n := filled.count(q)) < total:
                assert time.monotonic() < deadline, f"{n} of {total} samples stored after {WAIT_S} s"
                time.sleep(0.2)
        finally:
            bridge.stop()
        assert bridge.failure is None, f"bridge failed: {bridge.failure!r}"
    yield filled
    server.drop_database(db)
