"""Which ``labjack.ljm`` the driver talks to, and what its errors mean to the driver.

Backends (python-can's table, imported only when asked for):

* ``ljm``: the real ``labjack.ljm`` (PyPI ``labjack-ljm``), a ctypes wrapper around LabJack's
  native ``libLabJackM.so``, which comes from LabJack's installer, not from PyPI. Without it the
  wrapper still imports (it prints a complaint to stdout and keeps a null library), and its first
  call fails with an AttributeError; both become ``LJMUnavailable`` here.
* ``standin``: ``soclab.dev.sim.instruments.labjack_t7`` (development only), the same calls over
  the simulated battery.

LJM errors are sorted into three kinds: the device went away (``ConnectionLost``: the base
reopens), the stream stopped (``StreamLost``, a ConnectionLost: reopening restarts it), anything
else (``LabJackError`` with the LJM error code and name).
"""

# ruff: noqa: N802, N803 - the LJM API's own names

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from typing import Any, Protocol

from soclab.edge.instruments.base import ConnectionLost, DeviceError, InstrumentError

BACKENDS = ("ljm", "standin")


class LJMBackend(Protocol):
    """The part of ``labjack.ljm`` the driver uses (a module satisfies it)."""

    LJMError: type[Exception]
    errorcodes: Any

    def openS(self, deviceType: str, connectionType: str, identifier: str) -> int: ...

    def close(self, handle: int) -> None: ...

    def eReadName(self, handle: int, name: str) -> float: ...

    def eReadNames(self, handle: int, numFrames: int, aNames: list[str]) -> list[float]: ...

    def eWriteName(self, handle: int, name: str, value: float) -> None: ...

    def eWriteNames(self, handle: int, numFrames: int, aNames: list[str], aValues: list[float]) -> None: ...

    def namesToAddresses(self, numFrames: int, aNames: list[str]) -> tuple[list[int], list[int]]: ...

    def eStreamStart(
        self, handle: int, scansPerRead: int, numAddresses: int, aScanList: list[int], scanRate: float
    ) -> float: ...

    def eStreamRead(self, handle: int) -> tuple[list[float], int, int]: ...

    def eStreamStop(self, handle: int) -> None: ...


class LJMUnavailable(InstrumentError, ImportError):
    """The backend cannot be used at all: package or native library missing. Not retried.

    Also an ImportError, so that whoever builds drivers from configuration reports it as a
    setup problem (``soclab-publish`` exits with a configuration error)."""


class LabJackError(DeviceError):
    """An LJM or device error that is not a lost connection; ``code`` and ``name`` as LJM gives them."""

    def __init__(self, message: str, code: int | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class StreamLost(ConnectionLost):
    """The stream stopped (buffer overflow, not running); reopening restarts it."""


# LJM library error codes (labjack.ljm.errorcodes) by name, so that both backends agree.
_CONNECTION = frozenset(
    {
        "INVALID_HANDLE",
        "DEVICE_NOT_OPEN",
        "DEVICE_DISCONNECTED",
        "DEVICE_NOT_FOUND",
        "DEVICE_CURRENTLY_CLAIMED_BY_ANOTHER_PROCESS",
        "CANNOT_CONNECT",
        "SOCKET_LEVEL_ERROR",
        "CANNOT_OPEN_DEVICE",
        "RECONNECT_FAILED",
        "CONNECTION_HAS_YIELDED_RECONNECT_FAILED",
        "USB_FAILURE",
        "NO_COMMAND_BYTES_SENT",
        "INCORRECT_NUM_COMMAND_BYTES_SENT",
        "NO_RESPONSE_BYTES_RECEIVED",
        "INCORRECT_NUM_RESPONSE_BYTES_RECEIVED",
        "NO_DEVICES_FOUND",
    }
)
_STREAM = frozenset(
    {
        "STREAM_NOT_INITIALIZED",
        "LJM_BUFFER_FULL",
        "STREAM_NOT_RUNNING",
        "SYNCHRONIZATION_TIMEOUT",
        "NO_SCANS_RETURNED",
    }
)


def load_backend(name: str) -> LJMBackend:
    """Import the backend called ``name``; the real one only now, with a typed error if unusable."""
    if name == "standin":
        try:
            ljm_standin = importlib.import_module("soclab.dev.sim.instruments.labjack_t7")
        except ImportError as exc:
            raise LJMUnavailable(
                "the LJM stand-in is development tooling (soclab-dev), not installed here"
            ) from exc
        standin: LJMBackend = ljm_standin
        return standin
    if name != "ljm":
        raise ValueError(f"unknown LabJack backend {name!r}; known: {', '.join(BACKENDS)}")
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):  # the wrapper prints its load failure
            ljm = importlib.import_module("labjack.ljm")
    except ImportError as exc:
        raise LJMUnavailable(
            f"the Python package labjack-ljm is not installed ({exc}); pip install 'soclab-edge[labjack]'"
        ) from exc
    wrapper = sys.modules.get("labjack.ljm.ljm")
    if wrapper is not None and getattr(wrapper, "_staticLib", True) is None:
        raise LJMUnavailable(native_missing(said.getvalue().strip()))
    backend: LJMBackend = ljm
    return backend


def native_missing(detail: str = "") -> str:
    return (
        "the native LJM library (libLabJackM.so) is not installed; install it with LabJack's LJM "
        "installer for this platform (it is not on PyPI)" + (f": {detail}" if detail else "")
    )


def code_names(backend: LJMBackend) -> dict[int, str]:
    """LJM error code -> name, from the backend's ``errorcodes``."""
    names: dict[int, str] = {}
    for key, value in vars(backend.errorcodes).items():
        if key.isupper() and isinstance(value, int) and value not in names:
            names[value] = key
    return names


def translate(exc: Exception, names: dict[int, str], doing: str) -> InstrumentError:
    """The driver's typed error for an ``LJMError`` raised while ``doing`` something."""
    code: int | None = getattr(exc, "errorCode", None)
    text = str(getattr(exc, "errorString", "") or exc)
    name = names.get(code) if code is not None else None
    message = f"{doing}: LJM {code} {name or '?'}: {text}" if code is not None else f"{doing}: {text}"
    if code is None:
        if "Cannot load the LJM library" in text:
            return LJMUnavailable(native_missing(text))
        if "Streaming has not been started" in text:
            return StreamLost(message)
        return LabJackError(message)
    if name in _CONNECTION:
        return ConnectionLost(message)
    if name in _STREAM:
        return StreamLost(message)
    return LabJackError(message, code, name)
