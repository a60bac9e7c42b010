"""The simulated lab on a 3-node NATS cluster: publishers on node 1, the bridge on node 2, each
with the other nodes as failover. Node 1 is killed with -9 mid-run, started again, then node 2;
after each kill, the recovery time is how long until every sample acquired up to one second after
the kill (the node still dead, so through another node) is in InfluxDB. At the end every
assigned (device, seq) is stored exactly once, or still in its spool waiting for a confirmation.

The bridge's node dying costs more than the publishers': the messages NATS had delivered to the
bridge and not yet seen acknowledged come back only after ``ack_wait`` (5 s here, 30 s by
default).
"""

from __future__ import annotations

import time

import pytest
from fleetkit import DEVICES, assigned, check_once, wait_stored

from soclab.dev.lab.cli import LabSettings, run_lab
from soclab.dev.localservices import NatsCluster

RECOVERY_LIMIT_S = 90.0
ACK_WAIT_S = 5.0


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_node_killed_mid_run_loses_nothing_and_doubles_nothing(tmp_path, influxdb, site, fleet_report):
    var = tmp_path / "var"
    with NatsCluster(tmp_path / "nats", ack_wait_s=ACK_WAIT_S) as cluster:
        edge_node, bridge_node = cluster.nodes[0], cluster.nodes[1]
        settings = LabSettings(
            site=site,
            node="pi-nats",
            mqtt={"host": bridge_node.host, "port": bridge_node.port},
            edge_mqtt={"host": edge_node.host, "port": edge_node.port},
            influxdb={"url": influxdb.url, "org": influxdb.org, "bucket": influxdb.bucket},
            simulation={"mppt_period_s": 0.1},
            env={
                "SOCLAB_MQTT_FAILOVER": cluster.failover(0),
                "SOCLAB_BRIDGE_MQTT_FAILOVER": cluster.failover(1),
                "SOCLAB_BRIDGE_INFLUX_TOKEN": influxdb.token,
                "SOCLAB_BRIDGE_MQTT_RECONNECT_MAX_S": "2",
                "SOCLAB_BRIDGE_MQTT_KEEPALIVE_S": "5",
                "SOCLAB_BRIDGE_RETRY_MAX_S": "2",
                "SOCLAB_MQTT_KEEPALIVE_S": "5",
                "SOCLAB_MQTT_RECONNECT_MAX_S": "2",
                "SOCLAB_MQTT_RESEND_GRACE_S": "3",
            },
        )
        with run_lab(settings, var) as (_view, children):

            def check_alive() -> None:
                assert not children.failed(), f"a process died: {children.failed()}"

            def caught_up() -> float:
                return wait_stored(influxdb.query, {d: assigned(var, d) for d in DEVICES}, check_alive, 60)

            caught_up()  # everything running and storing
            for index, whose in ((0, "the publishers'"), (1, "the bridge's")):
                time.sleep(3)
                cluster.nodes[index].kill()
                killed = time.monotonic()
                time.sleep(1)
                # Acquired up to a second after the kill, while the node is still dead: stored only
                # once the clients have moved to another node.
                targets = {d: assigned(var, d) for d in DEVICES}
                wait_stored(influxdb.query, targets, check_alive, RECOVERY_LIMIT_S)
                recovery = time.monotonic() - killed
                assert not cluster.nodes[index].running
                fleet_report.append(
                    f"NATS: {whose} node killed -9 mid-run: all acquired until 1 s after the kill "
                    f"stored {recovery:.1f} s after it (ack_wait {ACK_WAIT_S:g} s)"
                )
                time.sleep(2)
                cluster.nodes[index].start()
                cluster.wait_healthy(30)
            time.sleep(3)
            caught_up()
        counts = check_once(influxdb.query, var)
    fleet_report.append(f"NATS: after two node kills, stored once each: {counts}")
