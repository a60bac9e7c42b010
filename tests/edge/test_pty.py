"""The simulators' pseudo-terminal: a stable link, bytes both ways, unplug, and reopening."""

from __future__ import annotations

import serial

from soclab.dev.sim.pty import PtyPort


def test_a_driver_can_reopen_an_8o1_port_as_often_as_it_likes(tmp_path):
    port = PtyPort(tmp_path / "eload")
    try:
        for _ in range(3):  # a publisher restarted twice
            with serial.Serial(str(port.link), 57600, parity=serial.PARITY_ODD, timeout=1) as ser:
                ser.write(b"\x75\x00\x47\x00\xbc")
                assert port.read(timeout=2) == b"\x75\x00\x47\x00\xbc"
                port.write(b"ok")
                assert ser.read(2) == b"ok"
            port.read(timeout=0.01)  # the device's loop runs between two opens
    finally:
        port.close()


def test_unplugging_removes_the_link_and_replugging_restores_it(tmp_path):
    port = PtyPort(tmp_path / "mppt")
    port.vanish()
    assert not port.link.exists()
    assert port.read() == b""
    port.reappear()
    with serial.Serial(str(port.link), 115200, timeout=1) as ser:
        port.write(b"# {}\n")
        assert ser.readline() == b"# {}\n"
    port.close()
