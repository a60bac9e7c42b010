"""What each controllable instrument does for a command, and what its safe state is.

An actuator turns a ``soclab.cmd/1`` command (name and args) into driver calls; the driver's own
typed errors (the e-load's ``AccessDenied`` without remote control, ``UpperLimitExceeded``; the
MPPT's ``Forbidden``, ``NotFound``, ``NoResponse``) propagate and become ``failed`` results with
the instrument's error. ``safe()`` puts the instrument where nothing flows: the load's input
off, the charge controller's DC/DC (charging) off. The MPPT's load output is left as it is: it
may power other equipment (even the Pi), and it is switched only by an explicit command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol


class Actuator(Protocol):
    commands: ClassVar[frozenset[str]]

    def apply(self, command: str, args: Mapping[str, Any]) -> None: ...

    def safe(self) -> None: ...

    def towards_safe(self, command: str, args: Mapping[str, Any]) -> bool:
        """Whether the command only switches something off (always allowed)."""
        ...


class EloadActuator:
    """The EA electronic load (``EaLoadDriver``): remote, input, set values. Safe: input off."""

    commands: ClassVar[frozenset[str]] = frozenset(
        {"remote", "input", "set_current", "set_voltage", "set_power"}
    )

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def apply(self, command: str, args: Mapping[str, Any]) -> None:
        if command == "remote":
            self.driver.remote(bool(args["on"]))
        elif command == "input":
            self.driver.input(bool(args["on"]))
        elif command == "set_current":
            self.driver.set_current(float(args["a"]))
        elif command in ("set_voltage", "set_power"):
            method = getattr(self.driver, command, None)
            if method is None:
                raise NotImplementedError(f"this e-load driver has no {command}")
            method(float(args["v" if command == "set_voltage" else "w"]))
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
    """The LibreSolar charge controller (``MpptDriver``): charging (DcdcEn), load output (LoadEn),
    settings. Settings are named by the firmware (``BatChgMax_A``, ``Topping_V``; v0.5:
    ``Charger/sChgCurrentLimit_A``) or by role, the same on every firmware:
    ``charge_current_max_a``, ``charge_voltage_v``, ``capacity_ah``, ``load_disconnect_v``,
    ``load_reconnect_v``, ``load_enable_default`` (``fields._CONF_ROLES``). Safe: charging off."""

    commands: ClassVar[frozenset[str]] = frozenset({"charging", "load_output", "conf"})

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def apply(self, command: str, args: Mapping[str, Any]) -> None:
        if command == "charging":
            self.driver.set_input(DcdcEn=bool(args["on"]))
        elif command == "load_output":
            self.driver.set_input(LoadEn=bool(args["on"]))
        elif command == "conf":
            self.driver.write_conf(self._firmware_names(args["values"]))
        else:
            raise ValueError(f"the charge controller has no command {command!r}")

    def _firmware_names(self, values: Mapping[str, Any]) -> dict[str, Any]:
        from soclab.edge.instruments.libresolar_mppt.fields import DIALECTS

        dialect = DIALECTS.get(self.driver.dialect or "")
        named: dict[str, Any] = {}
        for key, value in values.items():
            if key[:1].islower():  # a role
                if dialect is None:
                    raise RuntimeError("the controller's firmware is not known yet: cannot name its settings")
                if key not in dialect.conf:
                    raise ValueError(f"no setting role {key!r}; roles: {', '.join(dialect.conf)}")
                group, name = dialect.conf[key]
                key = name if dialect.conf_group is not None else f"{group}/{name}"
            named[key] = value
        return named

    def safe(self) -> None:
        self.driver.set_input(DcdcEn=False)

    def towards_safe(self, command: str, args: Mapping[str, Any]) -> bool:
        return command == "charging" and args.get("on") is False


def actuator_for(kind: str, driver: Any) -> Actuator | None:
    """The actuator of an instrument kind, or None for one that takes no commands (the LabJack)."""
    if kind == "eload":
        return EloadActuator(driver)
    if kind == "mppt":
        return MpptActuator(driver)
    return None
