"""The registry of instrument kinds is the one list: what derives from it, and what must agree with it.

Two lists cannot derive from Python and are checked against it instead: the data schema's enum of
``source.kind`` (the wire contract) and the Ansible role's table of kinds (udev and install facts).
``disagreements`` says, for any registry, which of them a kind is missing from; the last test adds
a fourth kind in a folder of its own and shows what it needs.
"""

from __future__ import annotations

import importlib
import json
import re
import textwrap
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from soclab.dev.lab import cli as lab_cli
from soclab.dev.sim import cli as sim_cli
from soclab.dev.sim.simulator import WireSimulator
from soclab.edge import instruments
from soclab.edge.instruments import KINDS, Kind, Options, build, driver_class, kind, kinds
from soclab.edge.publisher.config import load

REPO = Path(__file__).parents[2]
SCHEMA = files("soclab.wire") / "schema" / "data.v1.json"
ROLE_KINDS = REPO / "ansible/roles/soclab_edge/vars/main.yml"
LAB_PUBLISHERS = REPO / "dev/soclab/dev/lab/publishers"
UNITS = {"v": "V", "a": "A", "w": "W", "ah": "Ah", "wh": "Wh", "pct": "%", "degc": "degC", "s": "s"}


def disagreements(registry: Mapping[str, Kind]) -> list[str]:
    """What the schema's enum and the Ansible role say that the registry does not (or the reverse)."""
    found = []
    enum = json.loads(SCHEMA.read_text())["$defs"]["source"]["properties"]["kind"]["enum"]
    if sorted(enum) != sorted(registry):
        found.append(f"schemas/soclab/wire/schema/data.v1.json source.kind enum {enum} != {sorted(registry)}")
    role = yaml.safe_load(ROLE_KINDS.read_text())["soclab_edge_kinds"]
    if sorted(role) != sorted(registry):
        found.append(
            f"ansible/roles/soclab_edge/vars/main.yml soclab_edge_kinds {sorted(role)} != {sorted(registry)}"
        )
    for name in set(role) & set(registry):
        k, facts = registry[name], role[name]
        if tuple(facts["usb_ids"]) != k.usb_ids:
            found.append(f"{name}: the role's usb_ids {facts['usb_ids']} != the registry's {list(k.usb_ids)}")
        if (facts["subsystem"] == "tty") != (k.transport == "serial"):
            found.append(
                f"{name}: the role's subsystem {facts['subsystem']} does not fit transport {k.transport}"
            )
    return found


def test_the_schema_and_the_ansible_role_agree_with_the_registry() -> None:
    assert disagreements(KINDS) == []


def test_the_roles_instrument_defaults_are_valid_options() -> None:
    role = yaml.safe_load(ROLE_KINDS.read_text())["soclab_edge_kinds"]
    for name, facts in role.items():
        table = {"port": f"/dev/soclab-{name}"} if kind(name).transport == "serial" else {}
        if "instrument" in facts:
            kind(name).load_options({**table, **facts["instrument"]})


@pytest.mark.parametrize("name", kinds())
def test_each_kind_is_whole(name: str) -> None:
    k = kind(name)
    assert issubclass(k.options, Options)
    assert driver_class(name).kind == name  # the measurement the driver writes is the kind's name
    for field in k.fields:  # the unit is the name's suffix ("ah" is a unit of its own)
        suffix = field.name.rsplit("_", 1)[-1]
        if field.unit is not None:
            assert UNITS.get(suffix) == field.unit, field
        else:
            assert suffix not in UNITS, field
    if k.simulator:
        module, _, cls = k.simulator.partition(":")
        assert issubclass(getattr(importlib.import_module(module), cls), WireSimulator)
    env = (
        {"SOCLAB_SOURCE_NODE": "pi-01", "SOCLAB_INSTRUMENT_PORT": "/dev/null"}
        if k.transport == "serial"
        else {}
    )
    config = load(LAB_PUBLISHERS / f"{name}.toml", env=env)  # the lab's own publisher of this kind
    assert isinstance(config.instrument, k.options)


def test_the_lab_and_the_simulator_command_derive_from_the_registry() -> None:
    assert kinds() == lab_cli.INSTRUMENTS
    assert sim_cli.wire_kinds() == [name for name in kinds() if kind(name).simulator]
    assert set(sim_cli.wire_kinds()) == {"mppt", "eload"}  # the LabJack is simulated behind LJM


def test_unknown_kinds_are_named() -> None:
    with pytest.raises(
        instruments.UnknownKind, match="no instrument kind 'toaster'; known: mppt, eload, labjack"
    ):
        kind("toaster")
    with pytest.raises(TypeError, match="takes MpptOptions"):
        build("mppt", kind("eload").load_options({"port": "/dev/null"}))


# --- a fourth kind --------------------------------------------------------------------------------
ACME_INIT = '''
    """ACME DM-1 bench multimeter (a pretend fourth kind)."""
    from soclab.edge.instruments.kinds import Field, Kind, Options


    class Dm1Options(Options, frozen=True):
        port: str
        rate_hz: float = 1.0


    KIND = Kind(
        name="acme_dm1",
        title="ACME DM-1 bench multimeter",
        options=Dm1Options,
        driver="acme_dm1.driver:Dm1Driver",
        fields=(Field("bat_v", "V", "battery voltage"),),
        headline=("bat_v",),
        transport="serial",
        usb_ids=("1234:5678",),
    )
'''
ACME_DRIVER = """
    from soclab.edge.instruments.base import Instrument, Reading


    class Dm1Driver(Instrument):
        kind = "acme_dm1"

        def __init__(self, options):
            super().__init__()
            self.options = options

        def _open(self):
            pass

        def _close(self):
            pass

        def _read(self, timeout):
            stamp = self.stamp()
            return [Reading(stamp.t_ns, {"bat_v": 12.5}, stamp.flags)]
"""


def test_a_fourth_kind_is_its_folder_and_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its folder (KIND, options, driver) and one line in the registry's list make it usable by the
    publisher; the two mirrors then say that they lack it, naming the files to change."""
    folder = tmp_path / "acme_dm1"
    folder.mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent(ACME_INIT))
    (folder / "driver.py").write_text(textwrap.dedent(ACME_DRIVER))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = {k.name: k for k in map(instruments._declared, (*instruments._FOLDERS, "acme_dm1"))}
    monkeypatch.setattr(instruments, "KINDS", registry)

    publisher = tmp_path / "dm1.toml"
    publisher.write_text(
        '[source]\nsite="lab1"\nnode="pi-01"\ndevice="dm1"\nkind="acme_dm1"\n[instrument]\nport="/dev/x"\n'
    )
    config = load(publisher, env={"SOCLAB_INSTRUMENT_RATE_HZ": "2"})
    driver = build("acme_dm1", config.instrument)
    assert (config.instrument.rate_hz, driver.read(0)[0].values) == (2.0, {"bat_v": 12.5})
    assert "acme_dm1" in kinds()
    assert sim_cli.wire_kinds() == ["mppt", "eload"]  # it has no simulator
    assert [re.sub(r" .*", "", line) for line in disagreements(registry)] == [
        "schemas/soclab/wire/schema/data.v1.json",
        "ansible/roles/soclab_edge/vars/main.yml",
    ]
