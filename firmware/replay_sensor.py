# A scripted sensor for the field loop (field.py): it replays readings recorded on flash, with the
# labels given for some of them, and after a power cut goes on where it stopped. A field day
# (`python -m skip2lora.bench.fieldday`) installs it with a day of fan spectra; any recording in
# these two files works:
#   replay.bin         the readings: one row of the model's inputs each, float32 little-endian
#   replay_labels.bin  a byte a reading: its class, or NO_LABEL
# field_config.json {"sensor": "replay_sensor"} makes it the board's sensor. read() returns None
# at the recording's end: the field loop ends, and the board serves the protocol alone.
import struct
import time

from s2l import storage

READINGS = "replay.bin"
LABELS = "replay_labels.bin"
POSITION = "replay_pos"  # readings replayed so far (written atomically: a cut keeps it)
NO_LABEL = 255
PAUSE_MS = 1  # between readings: a sensor's pace

_labels = storage.read(LABELS)
_f = open(READINGS, "rb")
_f.seek(0, 2)
_row = bytearray(_f.tell() // len(_labels))
_format = "<%df" % (len(_row) // 4)
_k = int(storage.recover(POSITION, int)[0] or 0)


def read():
    global _k
    if _k >= len(_labels):
        return None
    _f.seek(len(_row) * _k)
    _f.readinto(_row)
    _k += 1
    storage.write_atomic(POSITION, str(_k).encode())
    time.sleep_ms(PAUSE_MS)
    return struct.unpack(_format, _row)


def label(x, guess):
    y = _labels[_k - 1]
    return None if y == NO_LABEL else y
