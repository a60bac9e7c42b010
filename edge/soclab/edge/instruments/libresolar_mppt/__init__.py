"""LibreSolar MPPT charge controllers over ThingSet text mode: codec, link, field names, driver.

Its simulator is development tooling (``soclab.dev.sim.instruments.libresolar_mppt``).
"""

from soclab.edge.instruments.kinds import Field, Kind
from soclab.edge.instruments.libresolar_mppt.fields import FIELDS
from soclab.edge.instruments.libresolar_mppt.options import MpptOptions

KIND = Kind(
    name="mppt",
    title="LibreSolar MPPT-1210-HUS charge controller",
    options=MpptOptions,
    driver="soclab.edge.instruments.libresolar_mppt.driver:MpptDriver",
    fields=tuple(Field(f.name, f.unit, f.description) for f in FIELDS.values()),
    headline=("bat_v", "bat_a", "soc_pct", "chg_state"),
    transport="serial",
    usb_ids=("0483:374b",),
    simulator="soclab.dev.sim.instruments.libresolar_mppt:MpptSimulator",
)
