"""LabJack T7 through LJM: calibration, driver, and the ``labjack.ljm`` stand-in for tests and the lab.

The real ``labjack.ljm`` (and its native library) is imported only when a driver asks for the
``ljm`` backend; the stand-in (``soclab.dev.sim.instruments.labjack_t7``, development only) is
not imported here either.
"""

from soclab.edge.instruments.labjack_t7.backend import LabJackError, LJMUnavailable, StreamLost
from soclab.edge.instruments.labjack_t7.calibration import Calibration, Divider, LemCurrent, Raw
from soclab.edge.instruments.labjack_t7.driver import ChannelSpec, LabJackDriver

__all__ = [
    "Calibration",
    "ChannelSpec",
    "Divider",
    "LJMUnavailable",
    "LabJackDriver",
    "LabJackError",
    "LemCurrent",
    "Raw",
    "StreamLost",
]
