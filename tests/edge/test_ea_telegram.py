"""The EA EL 3000 telegram codec against the captures of PROTOCOLS.md section 2."""

from __future__ import annotations

import contextlib
import random

import pytest

from soclab.edge.instruments.base import DeviceError
from soclab.edge.instruments.ea_el3000 import telegram as tg


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


NOMINAL = (160.0, 60.0, 400.0)

# (bytes written, bytes answered) as captured on the lab's EL 3160-60A.
CAPTURES = [
    ("70 00 00 00 70", "8B 01 00 45 4C 20 33 31 36 30 2D 36 30 41 00 02 DB"),
    ("70 00 01 00 71", "8A 01 01 32 36 34 39 38 31 30 32 32 36 00 02 94"),
    ("55 01 47 00 9D", "85 01 47 64 00 1E 00 50 00 01 9F"),
    ("70 00 45 00 B5", "C0 01 FF 08 01 C8"),
]
# The capture of object 9 only says what the answer carries; this is that answer, built by hand.
SOFTWARE_ANSWER = "8E 01 09 56 35 2E 30 35 20 30 32 2E 30 38 2E 31 32 00 03 5F"


@pytest.mark.parametrize(("written", "answered"), CAPTURES)
def test_every_capture_is_a_valid_pair(written: str, answered: str) -> None:
    request, reply = tg.decode(hx(written)), tg.decode(hx(answered))
    assert request.kind == tg.Kind.QUERY
    assert request.to_device
    assert not reply.to_device
    assert reply.encode() == hx(answered)
    assert request.encode() == hx(written)
    assert reply.obj in (request.obj, tg.ERROR_OBJECT)


def test_device_type_capture() -> None:
    request = tg.decode(hx("70 00 00 00 70"))
    assert (request.sd, request.dn, request.obj, request.cast, request.length) == (0x70, 0, 0, True, 1)
    reply = tg.decode(hx(CAPTURES[0][1]))
    assert reply.kind == tg.Kind.ANSWER
    assert reply.length == 12
    assert reply.dn == 1
    assert tg.decode_string(reply.data) == "EL 3160-60A"


def test_serial_number_capture() -> None:
    assert tg.decode_string(tg.decode(hx(CAPTURES[1][1])).data) == "2649810226"


def test_software_version_answer() -> None:
    assert tg.decode(hx("70 00 09 00 79")).obj == 9
    reply = tg.decode(hx(SOFTWARE_ANSWER))
    assert (reply.obj, tg.decode_string(reply.data)) == (9, "V5.05 02.08.12")
    assert tg.answer(9, tg.encode_string("V5.05 02.08.12")).encode() == hx(SOFTWARE_ANSWER)


def test_actual_values_capture() -> None:
    request = tg.decode(hx("55 01 47 00 9D"))
    assert (request.dn, request.obj, request.cast, request.length) == (1, 71, False, 6)
    reply = tg.decode(hx(CAPTURES[2][1]))
    assert reply.data == hx("64 00 1E 00 50 00")
    # 0x6400 = 100 %, 0x1E00 = 30 %, 0x5000 = 80 % of 160 V, 60 A, 400 W
    assert tg.decode_actual(reply.data, *NOMINAL) == tg.ActualValues(160.0, 18.0, 320.0)


def test_error_8_capture() -> None:
    request = tg.decode(hx("70 00 45 00 B5"))
    assert (request.obj, request.length) == (69, 1)  # the Ah counter is 4 bytes long
    reply = tg.decode(hx("C0 01 FF 08 01 C8"))
    assert (reply.sd, reply.obj, reply.error_code) == (0xC0, tg.ERROR_OBJECT, 8)
    assert tg.error_answer(8).encode() == hx("C0 01 FF 08 01 C8")
    error = tg.device_error(reply.error_code or 0, "object 69")
    assert isinstance(error, tg.WrongObjectLength)
    assert isinstance(error, DeviceError)
    assert (error.code, error.meaning) == (8, "object length incorrect")
    assert "object 69" in str(error)


def test_the_lab_scripts_queries() -> None:
    assert tg.query(71).encode() == hx("75 00 47 00 BC")
    assert tg.query(69).encode() == hx("73 00 45 00 B8")
    assert tg.query(0).encode() == hx("70 00 00 00 70")
    assert tg.query(1).encode() == hx("70 00 01 00 71")
    assert tg.query(9).encode() == hx("70 00 09 00 79")
    assert tg.query(71, node=1, cast=False).encode() == hx("55 01 47 00 9D")
    assert tg.query(69, length=1).encode() == hx("70 00 45 00 B5")


def test_sends_and_acknowledgement() -> None:
    assert tg.send(54, bytes((0x10, 0x10))).encode() == hx("F1 00 36 10 10 01 47")
    assert tg.send(51, (1280).to_bytes(2, "big")).encode() == hx("F1 00 33 05 00 01 29")
    assert tg.error_answer(0).encode() == hx("C0 01 FF 00 01 C0")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (3, tg.ChecksumRejected),
        (4, tg.StartDelimiterRejected),
        (5, tg.WrongNode),
        (7, tg.UnknownObject),
        (8, tg.WrongObjectLength),
        (9, tg.AccessDenied),
        (0x0F, tg.DeviceLocked),
        (0x30, tg.UpperLimitExceeded),
        (0x31, tg.LowerLimitExceeded),
    ],
)
def test_error_codes_are_typed(code: int, cls: type[tg.EaDeviceError]) -> None:
    error = tg.device_error(code)
    assert type(error) is cls
    assert error.code == code
    assert error.meaning == tg.ERROR_MEANINGS[code]


def test_unknown_error_code_keeps_its_number() -> None:
    error = tg.device_error(0x42)
    assert type(error) is tg.EaDeviceError
    assert error.code == 0x42
    assert "0x42" in str(error)


def test_bad_frames_raise() -> None:
    with pytest.raises(tg.ChecksumMismatch):
        tg.decode(hx("75 00 47 00 BD"))
    with pytest.raises(tg.TelegramError, match="means 11 bytes"):
        tg.decode(hx("85 01 47 64 00 1E 00 01 9F"))
    with pytest.raises(tg.TelegramError, match="reserved"):
        tg.decode(hx("05 00 47 00 4C"))
    with pytest.raises(tg.TelegramError):
        tg.decode_actual(hx("64 00 1E 00"), *NOMINAL)
    with pytest.raises(tg.TelegramError):
        tg.decode_float(hx("3F C0 00"))


def test_scanner_skips_garbage_and_finds_the_frame() -> None:
    scanner = tg.FrameScanner(to_device=False)
    scanner.feed(hx("13 85 37") + hx(CAPTURES[2][1])[:4])
    assert scanner.next() is None
    scanner.feed(hx(CAPTURES[2][1])[4:] + hx("C0 01"))
    reply = scanner.next()
    assert reply is not None
    assert reply.obj == 71
    assert scanner.skipped == 3
    assert scanner.next() is None
    assert scanner.residue_kind() == "short"


def test_scanner_classifies_a_garbled_frame() -> None:
    garbled = bytearray(hx(CAPTURES[0][1]))
    garbled[5] ^= 0x5A
    scanner = tg.FrameScanner(to_device=False)
    scanner.feed(bytes(garbled))
    assert scanner.next() is None
    assert scanner.residue_kind() == "checksum"


def test_scanner_ignores_frames_of_the_other_direction() -> None:
    scanner = tg.FrameScanner(to_device=False)
    scanner.feed(hx("75 00 47 00 BC"))  # our own query echoed: not an answer
    assert scanner.next() is None
    device_side = tg.FrameScanner(to_device=True)
    device_side.feed(hx("75 00 47 00 BC"))
    assert device_side.next() == tg.query(71)


def test_scanner_buffer_is_bounded() -> None:
    scanner = tg.FrameScanner(to_device=False)
    scanner.feed(bytes(200))
    assert len(scanner.pending) <= tg.MAX_FRAME
    assert scanner.skipped >= 200 - tg.MAX_FRAME


def test_scaling() -> None:
    assert tg.to_word(3.0, 60.0) == 1280
    assert tg.to_word(60.0, 60.0) == tg.FULL_SCALE
    assert tg.from_word(0x6400, 160.0) == 160.0
    assert tg.quantise(12.5, 160.0) == 2000
    assert tg.quantise(-1.0, 60.0) == 0
    assert tg.quantise(1e9, 60.0) == 0xFFFF
    assert tg.quantise(float("nan"), 60.0) == 0
    with pytest.raises(ValueError, match="outside"):
        tg.to_word(-1.0, 60.0)
    with pytest.raises(ValueError, match="cannot scale"):
        tg.to_word(float("inf"), 60.0)


def test_strings_and_floats() -> None:
    assert tg.encode_float(160.0) == hx("43 20 00 00")
    assert tg.decode_float(hx("43 20 00 00")) == 160.0
    with pytest.raises(ValueError, match="longer"):
        tg.encode_string("x" * 16)


def test_no_byte_stream_makes_the_answer_side_raise_anything_but_a_telegram_error() -> None:
    """Issue 11, finding 6 asked the same of the e-load's codec as of the MPPT's: whatever comes down
    the RS232 line (noise, mutated captures, runs of valid-looking frames, huge bursts), the scanner
    returns frames or None, keeps its buffer bounded, and decoding an answer's data raises only
    TelegramError."""
    rng = random.Random(11)
    answers = [hx(a) for _, a in CAPTURES] + [hx(SOFTWARE_ANSWER)]
    scanner = tg.FrameScanner(to_device=False)
    found = intact = 0
    for _ in range(3000):
        chunk = bytearray(rng.choice(answers)) if rng.random() < 0.5 else bytearray(rng.randbytes(30))
        for _ in range(rng.randint(0, 3)):  # a few flipped bits
            chunk[rng.randrange(len(chunk))] ^= 1 << rng.randrange(8)
        if rng.random() < 0.3:
            chunk = chunk[: rng.randint(0, len(chunk))]
        intact += bytes(chunk) in answers
        scanner.feed(bytes(chunk))
        while (frame := scanner.next()) is not None:
            found += 1
            for decode in (
                lambda d: tg.decode_actual(d, *NOMINAL),
                tg.decode_float,
                tg.decode_word,
                tg.decode_string,
            ):
                with contextlib.suppress(tg.TelegramError):
                    decode(frame.data)
        assert len(scanner.pending) <= 4 * tg.MAX_FRAME
        assert scanner.residue_kind() in ("checksum", "short", None)
    scanner.feed(rng.randbytes(1_000_000))  # a burst of noise
    assert len(scanner.pending) <= tg.MAX_FRAME
    assert found >= 0.9 * intact > 100  # the intact answers among the noise are found
