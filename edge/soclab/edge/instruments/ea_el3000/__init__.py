"""EA Elektro-Automatik EL 3000 A electronic loads (the lab's EL 3160-60A): telegram codec, driver.

Its simulator is development tooling (``soclab.dev.sim.instruments.ea_el3000``).
"""

from soclab.edge.instruments.ea_el3000.options import EaLoadOptions
from soclab.edge.instruments.kinds import Field, Kind

KIND = Kind(
    name="eload",
    title="EA EL 3160-60A electronic load",
    options=EaLoadOptions,
    driver="soclab.edge.instruments.ea_el3000.driver:EaLoadDriver",
    fields=(
        Field("bat_v", "V", "input voltage = battery voltage"),
        Field("bat_a", "A", "battery current through the load, - discharging (0 with the input off)"),
        Field("power_w", "W", "power the load absorbs (>= 0)"),
        Field("ah", "Ah", "the load's own Ah counter"),
    ),
    headline=("bat_v", "bat_a", "ah"),
    transport="serial",
    usb_ids=("232e:0010", "232e:0018"),
    simulator="soclab.dev.sim.instruments.ea_el3000:EaLoadSimulator",
)
