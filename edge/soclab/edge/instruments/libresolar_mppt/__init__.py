"""LibreSolar MPPT charge controllers over ThingSet text mode: codec, field names, driver, simulator.

The simulator is not imported here, so the driver does not pull in the simulated lab.
"""

from soclab.edge.instruments.libresolar_mppt.driver import (
    BadRequest,
    DialectUnknown,
    Forbidden,
    MpptDriver,
    NoResponse,
    NotFound,
    ServerError,
    ThingSetError,
    Unauthorized,
    UnexpectedResponse,
)

__all__ = [
    "BadRequest",
    "DialectUnknown",
    "Forbidden",
    "MpptDriver",
    "NoResponse",
    "NotFound",
    "ServerError",
    "ThingSetError",
    "Unauthorized",
    "UnexpectedResponse",
]
