"""The wire format: round trips, escaping, and resync after every kind of damage."""
import pytest

from s2l import frames as F


def frames_of(events):
    return [e[1:] for e in events if e[0] == "frame"]


@pytest.mark.parametrize("ftype", F.REQUESTS + (F.OK, F.PROGRESS, F.DONE, F.ERROR))
def test_every_frame_type_round_trips_and_never_holds_ctrl_c(ftype):
    payload = bytes(range(256)) * 2  # every byte value, START/ESC/0x03 included
    wire = F.encode(ftype, 0x0303, payload)
    assert F.CTRL_C not in wire and wire.count(F.START) == 1
    assert frames_of(F.Decoder().feed(wire)) == [(ftype, 0x0303, payload)]


def test_byte_at_a_time_and_back_to_back():
    wire = F.encode(F.HELLO, 1) + F.encode(F.STATS, 2, b"x")
    d = F.Decoder()
    events = [e for b in wire for e in d.feed(bytes([b]))]
    assert frames_of(events) == [(F.HELLO, 1, b""), (F.STATS, 2, b"x")]


def test_garbage_truncation_and_bad_crc_resync_to_the_next_frame():
    good = F.encode(F.EVAL, 9, b"ok")
    bad_crc = bytearray(F.encode(F.EVAL, 8, b"ok"))
    bad_crc[-2] ^= 0x40
    wire = b"\x00garbage\xff" + F.encode(F.TRAIN, 7, b"abcdef")[:6] + bytes(bad_crc) + b"junk" + good
    events = F.Decoder().feed(wire)
    assert ("error", F.E_CRC, "frame failed its CRC", 8) in events
    assert frames_of(events) == [(F.EVAL, 9, b"ok")]


def test_oversize_length_is_an_error_then_resync():
    import struct
    body = struct.pack("<BHH", F.SAMPLES, 5, F.MAX_PAYLOAD + 1)
    events = F.Decoder().feed(bytes([F.START]) + F.escape(body) + b"\x01" * 50 + F.encode(F.HELLO, 6))
    assert events[0][:2] == ("error", F.E_OVERSIZE)
    assert frames_of(events) == [(F.HELLO, 6, b"")]
    with pytest.raises(ValueError, match="exceeds"):
        F.encode(F.SAMPLES, 1, bytes(F.MAX_PAYLOAD + 1))
