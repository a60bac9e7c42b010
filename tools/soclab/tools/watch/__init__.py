"""``soclab watch``: a live monitor of a soclab broker; an ordinary MQTT subscriber that only reads.

- ``model``: what is known about each device, bridge and run (pure: messages and time are given);
  ``sequence`` and ``windows`` are its bookkeeping (sequence holes, rates, lags).
- ``intake``: the MQTT subscriber that feeds a model (or the ``--json`` printer), and says when
  it falls behind.
- ``render``: the screen, drawn from a model with rich.
- ``kinds``: the one place that knows instrument kinds (the registry's metadata) and units.
- ``cli``: the command (live view, ``--json``, ``--status``).

``make lab``'s live view is this monitor too (``soclab.dev.lab.view``).
"""

from soclab.tools.watch.intake import Intake, subscriptions
from soclab.tools.watch.model import Filters, Model, Thresholds
from soclab.tools.watch.render import plain, render

__all__ = ["Filters", "Intake", "Model", "Thresholds", "plain", "render", "subscriptions"]
