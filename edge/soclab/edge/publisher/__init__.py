"""The edge publisher: one process per instrument, driver -> spool -> MQTT."""
