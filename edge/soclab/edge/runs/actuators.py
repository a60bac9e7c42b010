"""What each controllable instrument does for a command, and what its safe state is.

An actuator turns a ``soclab.cmd/1`` command (name and args) into calls of its driver's control
methods; the driver's own typed errors (the e-load's ``AccessDenied`` without remote control,
``UpperLimitExceeded``; the MPPT's ``Forbidden``, ``NotFound``, ``NoResponse``, ``Unsupported``)
propagate and become ``failed`` results carrying the instrument's error. ``safe()`` puts the
instrument where nothing flows: the load's input off, the charge controller's DC/DC (charging)
off. The MPPT's load output is left as it is: it may power other equipment (even the Pi), and it
is switched only by an explicit command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from soclab.edge.instruments.base import Instrument

if TYPE_CHECKING:
    from soclab.edge.instruments.ea_el3000.driver import EaLoadDriver
    from soclab.edge.instruments.libresolar_mppt.driver import MpptDriver


class Actuator(Protocol):
    commands: ClassVar[frozenset[str]]

    def apply(self, command: str, args: Mapping[str, Any]) -> None: ...

    def safe(self) -> None: ...

    def towards_safe(self, command: str, args: Mapping[str, Any]) -> bool:
        """Whether the command only switches something off (always allowed)."""
        ...


class EloadActuator:
    """The EA electronic load: remote, input, set values (V, A, W). Safe: input off."""

    commands: ClassVar[frozenset[str]] = frozenset(
        {"remote", "input", "set_current", "set_voltage", "set_power"}
    )

    def __init__(self, driver: EaLoadDriver) -> None:
        self.driver = driver

    def apply(self, command: str, args: Mapping[str, Any]) -> None:
        d = self.driver
        if command == "remote":
            d.remote(bool(args["on"]))
        elif command == "input":
            d.input(bool(args["on"]))
        elif command == "set_current":
            d.set_current(float(args["a"]))
        elif command == "set_voltage":
            d.set_voltage(float(args["v"]))
        elif command == "set_power":
            d.set_power(float(args["w"]))
        else:
            raise ValueError(f"the e-load has no command {command!r}")

    def safe(self) -> None:
        """Input off. Switching the input needs remote control, so take it first (the front panel
        is then locked, which is what a lab wants of a load that a run left)."""
        self.driver.remote(True)
        self.driver.input(False)

    def towards_safe(self, command: str, args: Mapping[str, Any]) -> bool:
        return command == "input" and args.get("on") is False


class MpptActuator:
    """The LibreSolar charge controller: charging (DcdcEn), load output (LoadEn), charge limits
    by meaning (``charge_limits``: ``current_max_a``, ``voltage_v``, ``topping_cutoff_a``, the
    same on every firmware) and any setting by the firmware's own name (``conf``: ``BatChgMax_A``;
    v0.5: ``Charger/sChgCurrentLimit_A``). Safe: charging off."""

    commands: ClassVar[frozenset[str]] = frozenset({"charging", "load_output", "charge_limits", "conf"})

    def __init__(self, driver: MpptDriver) -> None:
        self.driver = driver

    def apply(self, command: str, args: Mapping[str, Any]) -> None:
        d = self.driver
        if command == "charging":
            d.set_charging(bool(args["on"]))
        elif command == "load_output":
            d.set_load_output(bool(args["on"]))
        elif command == "charge_limits":
            d.set_charge_limits(**{k: float(v) for k, v in args.items()})
        elif command == "conf":
            d.write_conf(dict(args["values"]))
        else:
            raise ValueError(f"the charge controller has no command {command!r}")

    def safe(self) -> None:
        self.driver.set_charging(False)

    def towards_safe(self, command: str, args: Mapping[str, Any]) -> bool:
        return command == "charging" and args.get("on") is False


def actuator_for(instrument: Instrument) -> Actuator | None:
    """The actuator of an instrument, or None for one that takes no commands (the LabJack)."""
    if instrument.kind == "eload":
        return EloadActuator(cast("EaLoadDriver", instrument))
    if instrument.kind == "mppt":
        return MpptActuator(cast("MpptDriver", instrument))
    return None
