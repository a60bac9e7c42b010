"""A swarm of simulated devices in one process: many MQTT clients on one asyncio loop.

Each device is what a slow instrument's publisher is on the wire: its own MQTT connection
(client id ``fleet-<site>-<node>-<device>``, persistent session), its own topic
``soclab/<site>/<node>/<device>/data``, one ``soclab.data/1`` sample per message at a fixed rate
with its own sequence numbers from 0, QoS 1, and a subscription to its own ``.../stored`` topic
where the bridge confirms what it wrote. The lag of a sample is the confirmation's ``t_ns`` (the
bridge's clock, just after the write succeeded) minus the sample's ``t_ns`` (taken when it was
"acquired"): acquisition to storage. Both clocks are this machine's.

paho-mqtt does the MQTT; this module only drives paho's sockets from asyncio (paho's own
``on_socket_*`` hooks), so thousands of clients need neither a thread nor a process each. Devices
are spread evenly over the sampling period so that the load is smooth, as a real fleet's is.

``run_swarm`` is the entry point of one worker process (``bench/fleet.py`` starts a few).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

SCHEMA = "soclab.data/1"


@dataclass
class SwarmPlan:
    """What one worker simulates: devices ``first .. first+count-1`` of the fleet."""

    host: str
    port: int
    first: int
    count: int
    sites: int  # device i belongs to site fleet<i % sites>
    rate_hz: float
    start_at: float  # time.time() when every worker starts sampling, so workers stay in step
    duration_s: float
    drain_s: float  # after the last sample, how long to wait for the last confirmations
    max_inflight: int = 20


@dataclass
class SwarmResult:
    published: array = field(default_factory=lambda: array("q"))  # samples per device
    confirmed: array = field(default_factory=lambda: array("q"))
    dead_lettered: int = 0
    lag_ns: array = field(default_factory=lambda: array("q"))  # one per confirmed sample
    acquired_ns: array = field(default_factory=lambda: array("q"))  # its acquisition time
    connect_failures: int = 0
    disconnects: int = 0
    invalid_confirmations: int = 0
    cpu_s: float = 0.0  # CPU seconds while sampling
    finished: bool = False  # disconnections from here on are the swarm's own


def identity(index: int, sites: int) -> tuple[str, str, str]:
    """site, node, device of fleet device ``index``: 100 devices per node, nodes per site."""
    return f"fleet{index % sites}", f"node{index // 100}", f"dev{index}"


class Device:
    def __init__(self, index: int, plan: SwarmPlan, result: SwarmResult, slot: int) -> None:
        self.index = index
        site, node, device = identity(index, plan.sites)
        self.topic = f"soclab/{site}/{node}/{device}/data"
        self.stored_topic = f"soclab/{site}/{node}/{device}/stored"
        source = json.dumps({"site": site, "node": node, "device": device, "kind": "mppt"})
        self.prefix = f'{{"schema":"{SCHEMA}","source":{source},"samples":[{{"seq":'
        self.seq = 0
        self.pending: dict[int, int] = {}  # seq -> t_ns, until confirmed
        self.result = result
        self.slot = slot  # this device's index in result.published / confirmed
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"fleet-{site}-{node}-{device}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(plan.max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def sample(self) -> None:
        t_ns = time.time_ns()
        seq = self.seq
        self.seq += 1
        self.pending[seq] = t_ns
        values = f'"bat_v":{12.0 + (seq % 100) / 100},"bat_a":-1.0,"soc_pct":80.0'
        payload = f'{self.prefix}{seq},"t_ns":{t_ns},"values":{{{values}}}}}]}}'.encode()
        self.client.publish(self.topic, payload, qos=1)
        self.result.published[self.slot] += 1

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.result.connect_failures += 1
            return
        client.subscribe(self.stored_topic, qos=1)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if not self.result.finished:
            self.result.disconnects += 1

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            stored_ns = int(body["t_ns"])
            ranges = body.get("stored", [])
            dead = body.get("dead_lettered", [])
        except (ValueError, KeyError, TypeError):
            self.result.invalid_confirmations += 1
            return
        r = self.result
        for first, last in ranges:
            for seq in range(first, last + 1):
                t_ns = self.pending.pop(seq, None)
                if t_ns is not None:  # a repeated confirmation counts once
                    r.confirmed[self.slot] += 1
                    r.lag_ns.append(stored_ns - t_ns)
                    r.acquired_ns.append(t_ns)
        for first, last in dead:
            for seq in range(first, last + 1):
                if self.pending.pop(seq, None) is not None:
                    r.dead_lettered += 1


class _Sockets:
    """paho's socket hooks on an asyncio loop: read when readable, write when paho has data."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._open
        client.on_socket_close = self._close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write

    def _open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_reader(sock, client.loop_read)
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)

    def _close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)


async def _swarm(plan: SwarmPlan) -> SwarmResult:
    loop = asyncio.get_running_loop()
    result = SwarmResult()
    result.published = array("q", bytes(8 * plan.count))
    result.confirmed = array("q", bytes(8 * plan.count))
    sockets = _Sockets(loop)
    devices = [Device(plan.first + i, plan, result, i) for i in range(plan.count)]
    for device in devices:
        sockets.attach(device.client)
        device.client.connect(plan.host, plan.port, keepalive=60)
        if device.index % 200 == 0:
            await asyncio.sleep(0)  # let CONNACKs in while connecting the rest
    stop_misc = asyncio.Event()

    async def misc() -> None:
        while not stop_misc.is_set():
            for device in devices:
                device.client.loop_misc()  # keepalive pings, retries of unacknowledged publishes
            await asyncio.sleep(1.0)

    misc_task = asyncio.create_task(misc())
    await asyncio.wait_for(asyncio.gather(*(d.subscribed.wait() for d in devices)), timeout=120)

    # Sampling: device i samples at start_at + (i / fleet) * period + k * period.
    period = 1.0 / plan.rate_hz
    offsets = [((d.index * 0.6180339887) % 1.0) * period for d in devices]  # spread evenly
    order = sorted(range(len(devices)), key=offsets.__getitem__)
    end = plan.start_at + plan.duration_s
    await asyncio.sleep(max(0.0, plan.start_at - time.time()))
    cpu_start = _cpu()
    k = 0
    while True:
        base = plan.start_at + k * period
        if base >= end:
            break
        for n, i in enumerate(order):
            due = base + offsets[i]
            now = time.time()
            if due > now + 0.002:
                await asyncio.sleep(due - now)
            elif n % 16 == 0:
                await asyncio.sleep(0)  # behind or on time: still let paho read and write
            devices[i].sample()
        k += 1
    result.cpu_s = _cpu() - cpu_start  # while sampling only
    deadline = time.monotonic() + plan.drain_s
    while any(d.pending for d in devices) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    stop_misc.set()
    await misc_task
    result.finished = True
    for device in devices:
        device.client.disconnect()
    await asyncio.sleep(0.2)
    return result


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_swarm(plan: SwarmPlan) -> SwarmResult:
    """Run the plan's devices to the end; the result holds every figure (picklable)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, plan.count + 1024)), hard))
    return asyncio.run(_swarm(plan))
