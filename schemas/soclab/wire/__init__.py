"""soclab's wire contract: the topic layout and the JSON messages between edge and cloud.

The JSON Schemas in ``schema/`` are the single source of truth; this package only loads them,
validates against them and names topics. Edge and cloud both depend on it, nothing else.
"""

from soclab.wire.messages import (
    CMD_RESULT_SCHEMA,
    CMD_SCHEMA,
    DATA_SCHEMA,
    DEADLETTER_SCHEMA,
    JOURNAL_SCHEMA,
    RUN_SCHEMA,
    RUN_STATUS_SCHEMA,
    STATUS_SCHEMA,
    STORED_SCHEMA,
    InvalidMessage,
    decode,
    encode,
    validate,
)
from soclab.wire.topics import Topic, TopicError

__all__ = [
    "CMD_RESULT_SCHEMA",
    "CMD_SCHEMA",
    "DATA_SCHEMA",
    "DEADLETTER_SCHEMA",
    "JOURNAL_SCHEMA",
    "RUN_SCHEMA",
    "RUN_STATUS_SCHEMA",
    "STATUS_SCHEMA",
    "STORED_SCHEMA",
    "InvalidMessage",
    "Topic",
    "TopicError",
    "decode",
    "encode",
    "validate",
]
