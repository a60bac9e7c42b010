"""LabJack T7 through LJM: channels and their calibration, the stream's clock, the driver.

The real ``labjack.ljm`` (and its native library) is imported only when a driver asks for the
``ljm`` backend; the stand-in (``soclab.dev.sim.instruments.labjack_t7``, development only) is
not imported here either.
"""

from soclab.edge.instruments.kinds import Field, Kind
from soclab.edge.instruments.labjack_t7.options import LabJackOptions

KIND = Kind(
    name="labjack",
    title="LabJack T7 with a LEM LA 55-P and a voltage divider (the precision reference)",
    options=LabJackOptions,
    driver="soclab.edge.instruments.labjack_t7.driver:LabJackDriver",
    fields=(
        Field("bat_a", "A", "battery current through the LEM LA 55-P, + charging"),
        Field("bat_v", "V", "battery voltage through the divider"),
    ),
    headline=("bat_v", "bat_a"),
    transport="ljm",
    usb_ids=("0cd5:0007",),
    fields_note="the lab's wiring; [instrument.channels.<field>] names them (a *_a or *_v each)",
)
