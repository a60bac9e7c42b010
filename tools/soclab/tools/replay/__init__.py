"""``soclab replay``: publish a recorded session through the pipeline and see it stored.

``recording`` reads a Grafana CSV export, ``columns`` says which device and field each column
becomes, ``messages`` cuts it into ``soclab.data/1`` messages on the replay path, ``sender``
publishes them with a bounded window and settles them by the bridge's confirmations (``tally``),
``cli`` is the command.
"""

from soclab.tools.replay.cli import main
from soclab.tools.replay.columns import ColumnError, Mapping, Selector, Target
from soclab.tools.replay.messages import Batch, batches
from soclab.tools.replay.recording import Recording, RecordingError, Sample, read_grafana_csv

__all__ = [
    "Batch",
    "ColumnError",
    "Mapping",
    "Recording",
    "RecordingError",
    "Sample",
    "Selector",
    "Target",
    "batches",
    "main",
    "read_grafana_csv",
]
