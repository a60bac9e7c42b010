"""What each LibreSolar firmware generation calls its data, and what soclab calls it.

The item names below were read from the charge-controller firmware itself
(github.com/LibreSolar/charge-controller-firmware), not guessed, except where marked:

- ``v21``  tag v21.0, ``src/data_nodes.cpp`` (ThingSet v0.3): flat names, publication ``# {...}``.
- ``v0.4`` commit 46807de (2021-11), ``src/data_objects.cpp`` (ThingSet v0.4): the same item
  names as v21.0 but regrouped (``meas``, ``state``, ``rec``), publication ``#serial {...}``.
- ``v0.5`` commit f5528b6 (2023-01, the newest), ``app/src/data_objects.cpp`` (ThingSet v0.5):
  nested groups with role prefixes (``r`` read-only, ``p`` persistent, ``s`` setting,
  ``w`` writable, ``c`` constant, ``x`` function), publication ``#mSerial {"Device":{...},...}``.
  Firmware from 2022-02 to 2023-01 used older names in the same groups (``rMeas_V``,
  ``rCalc_W``, ``pDis_Ah`` ...); they are accepted as aliases.
- ``v0.6`` (ThingSet v0.6, ``#mLive {...}``, optional CRC): **no LibreSolar charge-controller
  firmware of this generation was found**; its names are assumed to be v0.5's (a guess).

soclab names are snake case and end in their unit (data.v1.json: ``^[a-z][a-z0-9_]{0,63}$``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from soclab.edge.instruments.base import Value


@dataclass(frozen=True, slots=True)
class Field:
    """A soclab field: its unit (None for codes and counts) and the decimals the firmware sends."""

    name: str
    unit: str | None
    decimals: int | None  # None: an integer item
    description: str


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("uptime_s", "s", None, "time since the controller's last reset"),
        Field("bat_v", "V", 2, "battery voltage"),
        Field("bat_a", "A", 2, "current at the controller's battery terminal, + charging"),
        Field("soc_pct", "%", None, "the controller's own state-of-charge estimate"),
        Field("chg_state", None, None, "charger state: 0 idle, 1 bulk, 2 topping, 3 trickle, 4 equalization"),
        Field("dcdc_state", None, None, "DC/DC control: 0 off, 1 MPPT, 2 CC, 3 CV (low side), 6 derating"),
        Field("solar_v", "V", 2, "solar panel voltage"),
        Field("solar_a", "A", 2, "solar panel current"),
        Field("load_a", "A", 2, "current of the load output"),
        Field("load_info", None, None, "load output: 1 on, 0 off, negative = error flags"),
        Field("usb_info", None, None, "USB output: 1 on, 0 off, negative = error flags"),
        Field("error_flags", None, None, "device error bit field"),
        Field("deep_dis_count", None, None, "number of deep discharges"),
        Field("bat_usable_ah", "Ah", 1, "estimated usable battery capacity"),
        Field("solar_in_day_wh", "Wh", 2, "solar energy today"),
        Field("load_out_day_wh", "Wh", 2, "load output energy today"),
        Field("bat_chg_day_wh", "Wh", 2, "energy charged into the battery today"),
        Field("bat_dis_day_wh", "Wh", 2, "energy discharged from the battery today"),
        Field("dis_ah", "Ah", 0, "charge discharged since the last full charge (coulomb counter)"),
        Field("int_degc", "degC", 1, "internal (MCU) temperature"),
        Field("bat_w", "W", 2, "battery power, + charging"),
        Field("solar_w", "W", 2, "solar power"),
        Field("load_w", "W", 2, "load output power"),
        Field("mosfet_degc", "degC", 1, "DC/DC MOSFET temperature"),
        Field("bat_degc", "degC", 1, "battery temperature (external sensor or internal estimate)"),
        Field("ambient_degc", "degC", 1, "ambient temperature (the firmware's estimate)"),
    )
}


@dataclass(frozen=True, slots=True)
class Item:
    """One firmware data item that soclab maps: where it lives and whether it is published."""

    group: str  # request path of its group ("output", "Battery", ...)
    name: str  # the firmware's item name
    field: str  # the soclab field
    published: bool  # in the serial publication (PUB_SER / SUBSET_SER)


@dataclass(frozen=True, slots=True)
class Dialect:
    """Everything name-related about one firmware generation, for the driver and the simulator.

    ``items`` are in firmware order, which is the order of the publication. Paths are ThingSet
    request paths; ``(group, name)`` pairs use group ``""`` for the root.
    """

    name: str
    channel: str | None  # publication path: None for v21's "# {...}"
    nested: bool  # publication nests groups ({"Battery":{...}}) and names are "Group/item"
    verbose_status: bool  # ":85 Content." (v0.3-v0.5) or ":85" (v0.6)
    items: tuple[Item, ...]
    aliases: Mapping[str, str]  # older item keys -> soclab field
    identity: Mapping[str, tuple[str, str]]  # manufacturer/model/... -> (group, name)
    inputs: Mapping[str, tuple[str, str]]  # LoadEn/UsbEn/DcdcEn -> (group, name)
    conf: Mapping[str, tuple[str, str]]  # role -> (group, name), see _CONF_ROLES
    conf_group: str | None  # the one group holding the settings (None: spread over groups)
    pub_enable: tuple[str, str]
    pub_names: str  # GET returns the names of the published items
    reset: str  # EXEC reboots the controller (it does not answer)
    guessed: bool = False
    keys: Mapping[str, str] = field(init=False)  # item key ("Bat_V" / "Battery/rVoltage_V") -> field

    def __post_init__(self) -> None:
        keys = {self.key(i.group, i.name): i.field for i in self.items}
        for key, name in self.aliases.items():
            keys.setdefault(key, name)
        object.__setattr__(self, "keys", keys)

    def key(self, group: str, name: str) -> str:
        """How an item appears in this dialect's publication once flattened."""
        return f"{group}/{name}" if self.nested and group else name

    @property
    def published(self) -> tuple[Item, ...]:
        return tuple(i for i in self.items if i.published)


# Roles of the settings the driver and the simulator act on by meaning (a dialect's ``conf``; a
# role it lacks is a setting that firmware generation does not have, or whose name is not known).
_CONF_ROLES = (
    "capacity_ah",
    "charge_current_max_a",
    "charge_voltage_v",
    "topping_cutoff_a",
    "load_enable_default",
    "load_disconnect_v",
    "load_reconnect_v",
)


def _items(rows: str) -> tuple[Item, ...]:
    """Parse the compact tables below: ``group name field [pub]`` per line."""
    out = []
    for row in rows.strip().splitlines():
        parts = row.split()
        out.append(Item(parts[0], parts[1], parts[2], len(parts) > 3 and parts[3] == "pub"))
    return tuple(out)


# v21.0, src/data_nodes.cpp: "output" and "rec" groups; PUB_SER marks the published ones.
_V21_ITEMS = _items("""
output Uptime_s uptime_s pub
output Bat_V bat_v pub
output Bat_A bat_a pub
output Bat_W bat_w
output Bat_degC bat_degc
output SOC_pct soc_pct pub
output Int_degC int_degc
output Mosfet_degC mosfet_degc
output ChgState chg_state pub
output DCDCState dcdc_state pub
output Solar_V solar_v pub
output Solar_A solar_a pub
output Solar_W solar_w
output Load_A load_a pub
output Load_W load_w
output LoadInfo load_info pub
output UsbInfo usb_info pub
output ErrorFlags error_flags pub
rec DeepDisCount deep_dis_count pub
rec BatUsable_Ah bat_usable_ah pub
rec SolarInDay_Wh solar_in_day_wh pub
rec LoadOutDay_Wh load_out_day_wh pub
rec BatChgDay_Wh bat_chg_day_wh pub
rec BatDisDay_Wh bat_dis_day_wh pub
rec Dis_Ah dis_ah pub
""")

# 46807de, src/data_objects.cpp: same names as v21.0 in groups meas/state/rec (SUBSET_SER).
_V04_ITEMS = _items("""
meas Uptime_s uptime_s pub
meas Bat_V bat_v pub
meas Bat_A bat_a pub
meas Bat_W bat_w
meas Bat_degC bat_degc
meas Int_degC int_degc
meas Mosfet_degC mosfet_degc
meas Solar_V solar_v pub
meas Solar_A solar_a pub
meas Solar_W solar_w
meas Load_A load_a pub
meas Load_W load_w
meas Ambient_degC ambient_degc pub
meas SOC_pct soc_pct pub
state ChgState chg_state pub
state DCDCState dcdc_state pub
state LoadInfo load_info pub
state UsbInfo usb_info pub
state ErrorFlags error_flags pub
rec DeepDisCount deep_dis_count pub
rec BatUsable_Ah bat_usable_ah pub
rec BatChgDay_Wh bat_chg_day_wh pub
rec BatDisDay_Wh bat_dis_day_wh pub
rec Dis_Ah dis_ah pub
rec SolarInDay_Wh solar_in_day_wh pub
rec LoadOutDay_Wh load_out_day_wh pub
""")

# f5528b6, app/src/data_objects.cpp (2023-01 names; SUBSET_SER marks the published ones).
_V05_ITEMS = _items("""
Device rUptime_s uptime_s pub
Device rErrorFlags error_flags pub
Device rIntTemp_degC int_degc
Battery rVoltage_V bat_v pub
Battery rCurrent_A bat_a pub
Battery rPower_W bat_w
Battery rTemperature_degC bat_degc
Battery rSOC_pct soc_pct pub
Battery pCapacityEstimation_Ah bat_usable_ah pub
Battery pChgEnergyToday_Wh bat_chg_day_wh pub
Battery pDisEnergyToday_Wh bat_dis_day_wh pub
Battery pDeepDisCount deep_dis_count pub
Battery pDisCapacity_Ah dis_ah pub
Charger rState chg_state pub
Charger rDCDCState dcdc_state pub
Charger rMosfetTemp_degC mosfet_degc
Solar rVoltage_V solar_v pub
Solar rCurrent_A solar_a pub
Solar rPower_W solar_w
Solar pInputToday_Wh solar_in_day_wh pub
Load rCurrent_A load_a pub
Load rPower_W load_w
Load rState load_info pub
Load pOutputToday_Wh load_out_day_wh pub
USB rState usb_info pub
""")

# 0d07bcf..f5528b6~1 (2022-02 to 2023-01): the same items under their first v0.5 names.
_V05_ALIASES = {
    "Device/rInt_degC": "int_degc",
    "Battery/rMeas_V": "bat_v",
    "Battery/rMeas_A": "bat_a",
    "Battery/rCalc_W": "bat_w",
    "Battery/rMeas_degC": "bat_degc",
    "Battery/pEstUsable_Ah": "bat_usable_ah",
    "Battery/pChgDay_Wh": "bat_chg_day_wh",
    "Battery/pDisDay_Wh": "bat_dis_day_wh",
    "Battery/pDis_Ah": "dis_ah",
    "Charger/rMosfet_degC": "mosfet_degc",
    "Solar/rMeas_V": "solar_v",
    "Solar/rMeas_A": "solar_a",
    "Solar/rCalc_W": "solar_w",
    "Solar/pInDay_Wh": "solar_in_day_wh",
    "Load/rMeas_A": "load_a",
    "Load/rCalc_W": "load_w",
    "Load/pOutDay_Wh": "load_out_day_wh",
}

_FLAT_IDENTITY = {
    "serial_number": ("info", "DeviceID"),
    "manufacturer": ("info", "Manufacturer"),
    "model": ("info", "DeviceType"),
    "hardware_version": ("info", "HardwareVersion"),
    "firmware_version": ("info", "FirmwareVersion"),
}
_FLAT_INPUTS = {"LoadEn": ("input", "LoadEn"), "UsbEn": ("input", "UsbEn"), "DcdcEn": ("input", "DcdcEn")}
_V05_IDENTITY = {
    "serial_number": ("", "cNodeID"),
    "manufacturer": ("Device", "cManufacturer"),
    "model": ("Device", "cType"),
    "hardware_version": ("Device", "cHardwareVersion"),
    "firmware_version": ("Device", "cFirmwareVersion"),
}
_V05_INPUTS = {
    "LoadEn": ("Load", "wEnable"),
    "UsbEn": ("USB", "wEnable"),
    "DcdcEn": ("Charger", "wDCDCEnable"),
}
_V05_CONF = {
    "capacity_ah": ("Battery", "sNominalCapacity_Ah"),
    "charge_current_max_a": ("Charger", "sChgCurrentLimit_A"),
    "charge_voltage_v": ("Charger", "sChgVoltage_V"),
    "load_enable_default": ("Load", "sEnableDefault"),
    "load_disconnect_v": ("Load", "sDisconnectVoltage_V"),
    "load_reconnect_v": ("Load", "sReconnectVoltage_V"),
}

DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            name="v21",
            channel=None,
            nested=False,
            verbose_status=True,
            items=_V21_ITEMS,
            aliases={},
            identity=_FLAT_IDENTITY,
            inputs=_FLAT_INPUTS,
            conf={
                "capacity_ah": ("conf", "BatNom_Ah"),
                "charge_current_max_a": ("conf", "BatChgMax_A"),
                "charge_voltage_v": ("conf", "Topping_V"),
                "topping_cutoff_a": ("conf", "ToppingCutoff_A"),
                "load_enable_default": ("conf", "LoadEnDefault"),
                "load_disconnect_v": ("conf", "LoadDisconnect_V"),
                "load_reconnect_v": ("conf", "LoadReconnect_V"),
            },
            conf_group="conf",
            pub_enable=("pub/serial", "Enable"),
            pub_names="pub/serial/IDs",
            reset="exec/reset",
        ),
        Dialect(
            name="v0.4",
            channel="serial",
            nested=False,
            verbose_status=True,
            items=_V04_ITEMS,
            aliases={},
            identity=_FLAT_IDENTITY,
            inputs=_FLAT_INPUTS,
            conf={
                "capacity_ah": ("conf", "BatNom_Ah"),
                "charge_current_max_a": ("conf", "ChgMax_A"),
                "charge_voltage_v": ("conf", "Chg_V"),
                "load_enable_default": ("conf", "LoadEnDefault"),
                "load_disconnect_v": ("conf", "LoadDisconnect_V"),
                "load_reconnect_v": ("conf", "LoadReconnect_V"),
            },
            conf_group="conf",
            pub_enable=(".pub/serial", "Enable"),
            pub_names="serial",
            reset="rpc/x-reset",
        ),
        Dialect(
            name="v0.5",
            channel="mSerial",
            nested=True,
            verbose_status=True,
            items=_V05_ITEMS,
            aliases=_V05_ALIASES,
            identity=_V05_IDENTITY,
            inputs=_V05_INPUTS,
            conf=_V05_CONF,
            conf_group=None,
            pub_enable=("_Pub/mSerial", "wEnable"),  # "_pub/mSerial" {"Enable":..} before 2023-01
            pub_names="mSerial",
            reset="Device/xReset",
        ),
        Dialect(  # guessed: v0.5's names behind ThingSet v0.6 framing
            name="v0.6",
            channel="mLive",
            nested=True,
            verbose_status=False,
            items=_V05_ITEMS,
            aliases=_V05_ALIASES,
            identity=_V05_IDENTITY,
            inputs=_V05_INPUTS,
            conf=_V05_CONF,
            conf_group=None,
            pub_enable=("_Reporting/mLive", "sEnable"),
            pub_names="mLive",
            reset="Device/xReset",
            guessed=True,
        ),
    )
}

# Publication path -> dialect. PROTOCOLS.md writes v0.6's as "mLive_"; the ThingSet SDK says "mLive".
DIALECT_BY_CHANNEL: dict[str | None, Dialect] = {d.channel: d for d in DIALECTS.values()}
DIALECT_BY_CHANNEL["mLive_"] = DIALECTS["v0.6"]


@dataclass(frozen=True, slots=True)
class Mapped:
    """A publication translated: sample values, and what could not be used (by item key)."""

    values: dict[str, Value]
    unknown: tuple[str, ...]  # names soclab does not map
    non_numeric: tuple[str, ...]  # mapped names whose value was a string, null, list or object
    invalid: tuple[str, ...] = ()  # soclab fields whose value was nan or inf (the device's "no value")

    @property
    def flags(self) -> tuple[str, ...]:
        """Flags for the sample: ``invalid:<field>`` for each value the device sent as nan/inf."""
        return tuple(f"invalid:{name}" for name in self.invalid)


def flatten(data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Nested groups to ``"Group/item"`` keys, the way ThingSet paths name them (depth first, in
    order; a loop rather than recursion, since a line may nest as deep as JSON lets it)."""
    stack: list[Iterator[tuple[str, Any]]] = [iter(data.items())]
    prefixes = [""]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            prefixes.pop()
            continue
        key, value = entry
        path = f"{prefixes[-1]}{key}"
        if isinstance(value, Mapping):
            stack.append(iter(value.items()))
            prefixes.append(path + "/")
        else:
            yield path, value


_INT64 = range(-(2**63), 2**63)


def sample_value(value: Any) -> Value | None:
    """A value fit for a sample (bool stays bool, numbers stay numbers), else None. An integer
    must fit InfluxDB's 64 bits: a bigger one would be refused far from where it came from."""
    if isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else None
    return None


def _finite(value: Value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def map_items(data: Mapping[str, Any], dialect: Dialect) -> Mapped:
    """Translate one publication (or group read) of ``dialect`` into soclab's field names."""
    values: dict[str, Value] = {}
    unknown: list[str] = []
    non_numeric: list[str] = []
    invalid: list[str] = []
    for key, raw in flatten(data):
        name = dialect.keys.get(key)
        if name is None:
            unknown.append(key)
            continue
        value = sample_value(raw)
        if value is None:
            non_numeric.append(key)
        elif not _finite(value):
            invalid.append(name)
        else:
            values[name] = value
    return Mapped(values, tuple(unknown), tuple(non_numeric), tuple(invalid))
