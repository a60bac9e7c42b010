"""A simulated LibreSolar MPPT-1210-HUS on a pseudo-terminal, in one of three firmware generations.

It boots with a Zephyr-like banner, publishes once per ``period_s`` in the dialect's form
(``# {...}``, ``#serial {...}``, ``#mSerial {...}``) and answers requests through the same codec
as the driver, with the dialect's groups and names (``fields.DIALECTS``). Like the firmware:
a line not starting with ``? = + - !`` gets an empty line back (lines shorter than two characters
get nothing); a reset (``!exec/reset`` on v21) reboots without answering.

The battery: the charger is a current source ``mppt_charger`` that the lab sets with
``set_solar_charge(amps)`` (what the sun offers), limited to the charge current setting and, like
a real controller's CV phase, reduced so the battery stays at the charge voltage (14.4 V). The
load output is a source ``mppt_load`` of ``-load_a`` while LoadEn is on. ``bat_a`` is the battery's
net current, e-load included: in the lab's recording (soclab.dev.data) the controller's Bat_A
follows the LabJack's reference during the e-load's discharges, so its shunt sees all of it.

Simplifications, chosen here: solar voltage is a fixed MPP voltage while charging (0 V without
sun), temperatures are ambient plus a little per watt, ``dis_ah`` is the battery's total
discharged charge, the day counters start at boot, and no low-voltage disconnect is modelled.

The board is the lab's MPPT-1210-HUS, as the real firmware builds it for that board (the ThingSet
library transcripts in tests/data): it has no MOSFET temperature sensor, so ``Mosfet_degC`` is
not there (``:A4 Not Found.``), and the firmware after v21.0 has no ``Bat_degC`` either; v21.0's
``conf`` group holds the firmware's whole settings table, of which the charge current limit
(``BatChgMax_A``), the charge voltage (``Topping_V``) and the load settings act on the charger.
Charging stops with ``DcdcEn`` off; topping does not end at ``ToppingCutoff_A`` (not modelled).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from soclab.dev.sim.battery import Battery
from soclab.dev.sim.simulator import WireSimulator
from soclab.edge.instruments.libresolar_mppt import codec
from soclab.edge.instruments.libresolar_mppt.codec import NO_PAYLOAD, Status
from soclab.edge.instruments.libresolar_mppt.fields import DIALECTS, FIELDS, Dialect

log = logging.getLogger(__name__)

CHARGER = "mppt_charger"
LOAD = "mppt_load"
RX_BUFFER = 512  # the firmware's request buffer; longer requests are cut

# What the MPPT-1210-HUS lacks in each firmware generation (see the module doc).
_BOARD_LACKS = {"v21": {"mosfet_degc"}, "v0.4": {"mosfet_degc", "bat_degc"}, "v0.5": {"mosfet_degc"}}

# v21.0's whole settings table for this board, in the firmware's order, with its defaults (the
# real library's "?conf" answer); the roles' items (fields.DIALECTS["v21"].conf) are live settings.
_V21_CONF: tuple[tuple[str, Any], ...] = (
    ("BatNom_Ah", 50.0), ("BatRecharge_V", 13.0), ("BatAbsMin_V", 10.0), ("BatChgMax_A", 10.0),
    ("Topping_V", 14.4), ("ToppingCutoff_A", 1.0), ("ToppingCutoff_s", 7200), ("TrickleEn", True),
    ("Trickle_V", 13.8), ("TrickleRecharge_s", 1800), ("EqlEn", False), ("Eql_V", 14.8), ("Eql_A", 0.5),
    ("EqlDuration_s", 3600), ("EqlInterval_d", 60), ("EqlDeepDisTrigger", 10), ("BatTempComp_mV-K", -3.0),
    ("BatInt_Ohm", 0.025), ("BatWire_Ohm", 0.0), ("BatChgMax_degC", 50.0), ("BatChgMin_degC", -10.0),
    ("BatDisMax_degC", 50.0), ("BatDisMin_degC", -10.0), ("LoadEnDefault", True), ("LoadDisconnect_V", 11.8),
    ("LoadReconnect_V", 12.6), ("LoadOCRecovery_s", 30), ("LoadUVRecovery_s", 60), ("UsbEnDefault", True),
    ("UsbUVRecovery_s", 60),
)  # fmt: skip

_PROTECTED = frozenset({"rec"})  # records: writable only after the maker's authentication

_BOOT = {  # dialect -> (Zephyr build, firmware version string): plausible, not captured
    "v21": ("zephyr-v2.5.0", "v21.0"),
    "v0.4": ("zephyr-v2.7.0", "v21.0-57-g46807de"),
    "v0.5": ("zephyr-v3.2.0", "v21.0-118-gf5528b6"),
}


@dataclass
class _Item:
    """One readable (maybe writable) data item of the simulated object tree."""

    read: Callable[[], Any]
    write: Callable[[Any], None] | None = None
    type: type = float


class MpptSimulator(WireSimulator):
    """The charge controller at its USB serial port; see the module doc for what is modelled."""

    name = "mppt"

    def __init__(
        self,
        battery: Battery,
        link: str | Path,
        *,
        dialect: str = "v21",
        period_s: float = 1.0,
        banner: bool = True,
        load_a: float = 0.5,
        load_enabled: bool = False,
        publish: bool = True,
        charge_voltage_v: float = 14.4,
        charge_current_max_a: float = 10.0,
        solar_mpp_v: float = 18.0,
        efficiency: float = 0.95,
        ambient_degc: float = 25.0,
        echo_requests: bool = False,
        crc: bool = False,
        device_id: str = "4W7Q2M8K",
    ) -> None:
        """``echo_requests`` prints the firmware's ``Received Request (...)`` debug line, as when
        ThingSet shares the console UART; ``crc`` appends ThingSet v0.6 CRCs to every line."""
        if dialect not in _BOOT:
            raise ValueError(f"simulated dialects: {', '.join(_BOOT)}; got {dialect!r}")
        super().__init__(battery, link)
        self.dialect: Dialect = DIALECTS[dialect]
        self.period_s = period_s
        self.banner = banner
        self.load_a = load_a
        self.echo_requests = echo_requests
        self.crc = crc
        self.efficiency = efficiency
        self.solar_mpp_v = solar_mpp_v
        self.ambient_degc = ambient_degc
        self.device_id = device_id
        self.firmware_version = _BOOT[dialect][1]
        self._lock = threading.RLock()
        self._rx = bytearray()
        self._solar_offer_a = 0.0
        self._conf: dict[str, Any] = {
            "capacity_ah": float(battery.params.capacity_ah),
            "charge_current_max_a": charge_current_max_a,
            "charge_voltage_v": charge_voltage_v,
            "topping_cutoff_a": 1.0,
            "load_enable_default": load_enabled,
            "load_disconnect_v": 11.7,
            "load_reconnect_v": 12.6,
        }
        self._publish_default = publish
        self._other_conf: dict[str, Any] = {}  # settings stored and read back, not acted on
        # The controller's state; _reboot() sets it (at power-up and after a reset).
        self._boot_t = self._last_t_s = self._next_pub = 0.0
        self._load_en = self._cv_limited = self._booted = False
        self._pub_en = publish
        self._inputs: dict[str, bool] = {}
        self._energy: dict[str, float] = {}
        self._tree, self._lists, self._functions = self._build_tree()
        self._booted = False
        self._reboot()

    # --- what the lab and the tests drive -----------------------------------------------------------
    def set_solar_charge(self, amps: float) -> None:
        """What the panel could deliver into the battery now (A); the charger takes at most this."""
        if not math.isfinite(amps) or amps < 0:
            raise ValueError(f"a solar charger takes a finite current >= 0, got {amps}")
        with self._lock:
            self._solar_offer_a = float(amps)
            self._regulate()

    def remove_item(self, group: str, name: str) -> None:
        """Be a firmware build without this item (e.g. no MOSFET sensor): requests get NotFound."""
        with self._lock:
            del self._tree[group][name]

    def inject(self, raw: bytes) -> None:
        """Write raw bytes to the driver (garbage, half lines), as a disturbed wire would."""
        self.port.write(raw)

    def unplug(self) -> None:
        """USB cable out: the port vanishes; the controller itself keeps running."""
        self.port.vanish()

    def replug(self) -> None:
        self.port.reappear()

    @property
    def load_enabled(self) -> bool:
        with self._lock:
            return self._load_en

    @property
    def publishing(self) -> bool:
        with self._lock:
            return self._pub_en

    def values(self) -> dict[str, Any]:
        """What the controller would publish now, by soclab field name (rounded as the firmware does)."""
        with self._lock:
            return self._values()

    # --- the device loop --------------------------------------------------------------------------
    def _serve_once(self) -> None:
        if not self._booted:
            self._boot_messages()
        if not self.port.is_present:
            self._stop.wait(0.05)  # unplugged: nothing to read, nothing heard
        else:
            data = self.port.read(4096, timeout=0.05)
            if data:
                self._receive(data)
        line = None
        with self._lock:
            self._regulate()
            self._accumulate()
            now = time.monotonic()
            if now >= self._next_pub:
                self._next_pub = max(self._next_pub + self.period_s, now)
                if self._pub_en:
                    line = codec.format_publication(self._publication(), self.dialect.channel)
        if line is not None:
            self._send(line)  # outside the lock: a full pty blocks the write

    def _receive(self, data: bytes) -> None:
        self._rx += data
        while (end := self._rx.find(b"\n")) >= 0:
            line = bytes(self._rx[:end]).rstrip(b"\r")[:RX_BUFFER]
            del self._rx[: end + 1]
            self._handle_line(line.decode("utf-8", errors="replace"))
        if len(self._rx) > RX_BUFFER:
            del self._rx[RX_BUFFER:]  # characters beyond the buffer are dropped

    def _handle_line(self, line: str) -> None:
        if len(line) < 2:
            return  # "commands must have 2 or more characters"
        if self.echo_requests:
            self._send(f"Received Request ({len(line)} bytes): {line}")
        request = codec.parse_request(line)
        if request is None:
            self._send("")  # not a ThingSet request: empty response
            return
        with self._lock:
            response = self._answer(request)
        if response is not None:
            self._send(response)

    def _send(self, line: str) -> None:
        if self.crc and line:
            line = codec.append_crc(line)
        self.port.write(line.encode() + b"\n")

    # --- requests -----------------------------------------------------------------------------------
    def _answer(self, req: codec.Request) -> str | None:
        """The response line for one request (None: the device does not answer)."""
        try:
            if req.method == "?":
                return self._get(req)
            if req.method == "=":
                return self._patch(req)
            if req.method == "!":
                return self._exec(req)
            exists = req.path in self._tree or req.path in self._functions
            return self._respond(Status.METHOD_NOT_ALLOWED if exists else Status.NOT_FOUND)
        except codec.MalformedRequest:
            return self._respond(Status.BAD_REQUEST)

    def _respond(self, status: int, payload: Any = NO_PAYLOAD) -> str:
        return codec.format_response(status, payload, verbose=self.dialect.verbose_status)

    def _get(self, req: codec.Request) -> str:
        path = req.path
        if path.endswith("/") and not req.has_payload:  # "?conf/": the names in a group
            group = self._tree.get(path[:-1])
            if group is None:
                return self._respond(Status.NOT_FOUND)
            return self._respond(Status.CONTENT, list(group))
        if path in self._lists and not req.has_payload:
            return self._respond(Status.CONTENT, self._lists[path]())
        group = self._tree.get(path)
        if group is None:
            parent, _, name = path.rpartition("/")
            item = self._tree.get(parent, {}).get(name)
            if item is None or req.has_payload:
                return self._respond(Status.NOT_FOUND)
            return self._respond(Status.CONTENT, item.read())
        payload = req.payload()
        if payload is NO_PAYLOAD:
            return self._respond(Status.CONTENT, {name: item.read() for name, item in group.items()})
        if not isinstance(payload, list) or not all(isinstance(n, str) for n in payload):
            return self._respond(Status.BAD_REQUEST)
        if any(n not in group for n in payload):
            return self._respond(Status.NOT_FOUND)
        return self._respond(Status.CONTENT, [group[n].read() for n in payload])

    def _patch(self, req: codec.Request) -> str:
        group = self._tree.get(req.path)
        if group is None:
            return self._respond(Status.NOT_FOUND)
        payload = req.payload()
        if not isinstance(payload, dict) or not payload:
            return self._respond(Status.BAD_REQUEST)
        if req.path in _PROTECTED:
            return self._respond(Status.UNAUTHORIZED)
        for name, value in payload.items():  # check everything before writing anything
            item = group.get(name)
            if item is None:
                return self._respond(Status.NOT_FOUND)
            if item.write is None:
                return self._respond(Status.FORBIDDEN)
            if not _fits(value, item.type):
                return self._respond(Status.UNSUPPORTED_FORMAT)
        for name, value in payload.items():
            write = group[name].write
            if write is not None:
                write(value)
        self._regulate()
        return self._respond(Status.CHANGED)

    def _exec(self, req: codec.Request) -> str | None:
        function = self._functions.get(req.path)
        if function is None:
            parent, _, name = req.path.rpartition("/")
            exists = req.path in self._tree or name in self._tree.get(parent, {})
            return self._respond(Status.FORBIDDEN if exists else Status.NOT_FOUND)
        req.payload()  # a malformed argument list is a bad request
        function()
        return None

    # --- the object tree ------------------------------------------------------------------------------
    def _build_tree(
        self,
    ) -> tuple[
        dict[str, dict[str, _Item]], dict[str, Callable[[], list[str]]], dict[str, Callable[[], None]]
    ]:
        d = self.dialect
        tree: dict[str, dict[str, _Item]] = {}

        def put(group: str, name: str, item: _Item) -> None:
            tree.setdefault(group, {})[name] = item

        lacks = _BOARD_LACKS.get(d.name, set())
        for it in d.items:
            if it.field not in lacks:
                put(it.group, it.name, _Item(partial(self._field_value, it.field), None, _type_of(it.field)))
        identity = {
            "serial_number": self.device_id,
            "manufacturer": "Libre Solar",
            "model": "MPPT 1210 HUS",
            "hardware_version": "v0.7.1",
            "firmware_version": self.firmware_version,
        }
        for role, (group, name) in d.identity.items():
            put(group, name, _Item(partial(_constant, identity[role]), None, str))
        if d.name == "v0.4":
            url = "https://files.libre.solar/tsm/cc-4.json"
            put("info", "MetadataURL", _Item(partial(_constant, url), None, str))
        for key, (group, name) in d.inputs.items():
            put(group, name, _Item(partial(self._input_value, key), partial(self._set_input, key), bool))
        roles = {where: role for role, where in d.conf.items()}
        table: list[tuple[str, str, Any]] = [(d.conf_group or "conf", name, v) for name, v in _V21_CONF]
        if d.name != "v21":  # the later generations: the settings soclab knows by role
            table = [(group, name, None) for group, name in d.conf.values()]
        for group, name, default in table:
            conf_role = roles.get((group, name))
            if conf_role is not None:
                kind: type = bool if isinstance(self._conf[conf_role], bool) else float
                item = _Item(partial(self._conf_value, conf_role), partial(self._set_conf, conf_role), kind)
            else:
                self._other_conf[name] = default
                kind = type(default) if isinstance(default, bool | int) else float
                read = partial(self._other_conf.__getitem__, name)
                item = _Item(read, partial(self._set_other, name), kind)
            put(group, name, item)
        group, name = d.pub_enable
        put(group, name, _Item(self._pub_value, self._set_pub, bool))
        published = [d.key(i.group, i.name) for i in d.published if i.field not in lacks]
        lists: dict[str, Callable[[], list[str]]] = {d.pub_names: partial(list, published)}
        return tree, lists, {d.reset: self._reset_request}

    def _field_value(self, field: str) -> Any:
        return self._values()[field]

    def _input_value(self, key: str) -> bool:
        return self._inputs[key]

    def _pub_value(self) -> bool:
        return self._pub_en

    def _set_other(self, name: str, value: Any) -> None:
        self._other_conf[name] = value
        log.info("simulator=mppt event=conf %s=%r", name, value)

    def _conf_value(self, role: str) -> Any:
        value = self._conf[role]
        return value if isinstance(value, bool) else round(float(value), 2)

    def _set_conf(self, role: str, value: Any) -> None:
        self._conf[role] = value if isinstance(value, bool) else float(value)
        log.info("simulator=mppt event=conf %s=%r", role, value)

    def _set_input(self, key: str, value: bool) -> None:
        self._inputs[key] = bool(value)
        if key == "LoadEn":
            self._load_en = bool(value)

    def _set_pub(self, value: bool) -> None:
        self._pub_en = bool(value)

    def _reset_request(self) -> None:
        """The firmware calls sys_reboot() at once, so no response is ever sent."""
        self._reboot()

    # --- the controller's state -----------------------------------------------------------------------
    def _reboot(self) -> None:
        with self._lock:
            self._boot_t = time.monotonic()
            self._load_en = bool(self._conf["load_enable_default"])
            self._inputs = {"LoadEn": self._load_en, "UsbEn": True, "DcdcEn": True}
            self._pub_en = self._publish_default
            self._cv_limited = False
            self._energy = {"solar_in": 0.0, "load_out": 0.0, "bat_chg": 0.0, "bat_dis": 0.0}
            self._last_t_s = self.battery.state().t_s
            self._next_pub = self._boot_t + self.period_s
            self.battery.set_current(CHARGER, 0.0)
            self.battery.set_current(LOAD, 0.0)
            self._booted = False
            self._regulate()

    def _boot_messages(self) -> None:
        self._booted = True
        if self.banner:
            build = _BOOT[self.dialect.name][0]
            for line in (
                f"*** Booting Zephyr OS build {build}  ***",
                "Hardware: Libre Solar MPPT 1210 HUS (v0.7.1)",
                f"Firmware: {self.firmware_version}",
            ):
                self.port.write(line.encode() + b"\n")

    def _regulate(self) -> None:
        """Charger: at most the solar offer and the current limit; backed off to hold the CV voltage."""
        load = -self.load_a if self._load_en else 0.0
        if self.battery.current_of(LOAD) != load:
            self.battery.set_current(LOAD, load)
        offer = min(self._solar_offer_a, float(self._conf["charge_current_max_a"]))
        state = self.battery.state()
        if offer <= 0 or not self._inputs["DcdcEn"] or state.soc >= 1.0:
            target = 0.0
        else:
            # the battery's voltage rises with our current through its series resistance: step
            # towards the current that puts it at the charge voltage, damped to stay stable
            now = self.battery.current_of(CHARGER)
            step = (float(self._conf["charge_voltage_v"]) - state.voltage_v) / self._series_ohm(state.soc)
            target = min(offer, max(0.0, now + 0.7 * step))
        self._cv_limited = offer > 0 and target < offer - 1e-3
        if self.battery.current_of(CHARGER) != target:
            self.battery.set_current(CHARGER, target)

    def _series_ohm(self, soc: float) -> float:
        """The battery's r0 while charging, rising above the gassing knee (see battery.py)."""
        return max(self.battery.params.charge_ohm(soc), 1e-3)

    def _accumulate(self) -> None:
        """Day energy counters, integrated over the battery's model time."""
        state = self.battery.state()
        dt = state.t_s - self._last_t_s
        if dt <= 0:
            return
        self._last_t_s = state.t_s
        raw = self._raw()
        hours = dt / 3600.0
        self._energy["solar_in"] += raw["solar_w"] * hours
        self._energy["load_out"] += raw["load_w"] * hours
        self._energy["bat_chg"] += max(raw["bat_w"], 0.0) * hours
        self._energy["bat_dis"] += max(-raw["bat_w"], 0.0) * hours

    def _raw(self) -> dict[str, float]:
        state = self.battery.state()
        charge = self.battery.current_of(CHARGER)
        load = max(0.0, -self.battery.current_of(LOAD))
        bat_v = state.voltage_v
        bat_a = state.current_a
        solar_v = self.solar_mpp_v if self._solar_offer_a > 0 else 0.0
        solar_w = bat_v * charge / self.efficiency if charge > 0 else 0.0
        return {
            "state_soc": state.soc,
            "bat_v": bat_v,
            "bat_a": bat_a,
            "bat_w": bat_v * bat_a,
            "solar_v": solar_v,
            "solar_a": solar_w / solar_v if solar_v > 0 else 0.0,
            "solar_w": solar_w,
            "load_a": load,
            "load_w": bat_v * load,
            "charge_a": charge,
            "bat_degc": state.temperature_degc,
            "discharged_ah": state.discharged_ah,
        }

    def _values(self) -> dict[str, Any]:
        r = self._raw()
        charging = r["charge_a"] > 0
        if r["state_soc"] >= 1.0 and self._solar_offer_a > 0:
            chg_state = 3  # trickle
        elif charging:
            chg_state = 2 if self._cv_limited else 1  # topping (CV) or bulk
        else:
            chg_state = 0
        raw: dict[str, Any] = {
            "uptime_s": int(time.monotonic() - self._boot_t),
            "bat_v": r["bat_v"],
            "bat_a": r["bat_a"],
            "soc_pct": r["state_soc"] * 100.0,
            "chg_state": chg_state,
            "dcdc_state": (3 if self._cv_limited else 1) if charging else 0,
            "solar_v": r["solar_v"],
            "solar_a": r["solar_a"],
            "load_a": r["load_a"],
            "load_info": 1 if self._load_en else 0,
            "usb_info": 1 if self._inputs["UsbEn"] else 0,
            "error_flags": 0,
            "deep_dis_count": 0,
            "bat_usable_ah": float(self._conf["capacity_ah"]),
            "solar_in_day_wh": self._energy["solar_in"],
            "load_out_day_wh": self._energy["load_out"],
            "bat_chg_day_wh": self._energy["bat_chg"],
            "bat_dis_day_wh": self._energy["bat_dis"],
            "dis_ah": r["discharged_ah"],
            "int_degc": self.ambient_degc + 3.0 + 0.05 * r["solar_w"],
            "bat_w": r["bat_w"],
            "solar_w": r["solar_w"],
            "load_w": r["load_w"],
            "mosfet_degc": self.ambient_degc + 4.0 + 0.15 * r["solar_w"],
            "bat_degc": r["bat_degc"],
            "ambient_degc": self.ambient_degc,
        }
        return {name: _as_sent(name, value) for name, value in raw.items()}

    def _publication(self) -> dict[str, Any]:
        values = self._values()
        data: dict[str, Any] = {}
        lacks = _BOARD_LACKS.get(self.dialect.name, set())
        for item in self.dialect.published:
            if item.field in lacks:
                continue
            target = data.setdefault(item.group, {}) if self.dialect.nested else data
            target[item.name] = values[item.field]
        return data


def _as_sent(name: str, value: Any) -> Any:
    """Round as the firmware prints it: ``%.Nf`` for floats, integers as integers."""
    decimals = FIELDS[name].decimals
    if not decimals:  # integer items, and "%.0f", which reads back as a JSON integer
        return round(value)
    return round(float(value), decimals)


def _constant(value: Any) -> Any:
    return value


def _type_of(field: str) -> type:
    return int if FIELDS[field].decimals is None else float


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return isinstance(value, int | float) and not isinstance(value, bool)
