"""Data the simulated lab and the tests use, shipped with the development tooling.

``RECORDING``: one evening of the real lab (2021-05-28), exported from its Grafana; its README
beside it says what each column is and which phases it holds.
"""

from importlib.resources import as_file, files
from pathlib import Path

_RECORDING = files("soclab.dev.data") / "lab-2021-05-28" / "grafana-export-2021-05-28.csv"


def recording_path() -> Path:
    """The 2021-05-28 recording as a file path (the package is installed from a folder)."""
    with as_file(_RECORDING) as path:
        return Path(path)


RECORDING = recording_path()
