# The serial protocol's wire format: the one definition, used by the board and by the host.
#
#   wire   START (0x7E) | escaped body
#   body   u8 type | u16 seq | u16 length | payload[length] | u32 CRC32 of type..payload
#
# All integers little-endian. Inside the body, START, ESC and 0x03 travel as ESC, byte ^ 0x20: a
# frame never holds a raw 0x03, so a board can keep Ctrl-C (0x03) armed for mpremote, and START
# only ever begins a frame, so a receiver resyncs on it after garbage or a truncated frame.
import binascii
import struct

PROTOCOL_VERSION = 1
START = 0x7E
ESC = 0x1B
CTRL_C = 0x03
_ESCAPED = (START, ESC, CTRL_C)
_START, _ESC = bytes([START]), bytes([ESC])
MAX_PAYLOAD = 1024
MAX_ERROR_MESSAGE = 200  # bytes of an ERROR's message; longer ones are cut (short frames survive noise)
_HEADER = "<BHH"
HEADER_SIZE = 5
CRC_SIZE = 4

# requests (host -> board)
HELLO = 0x01
MODEL_BEGIN = 0x02  # JSON {"size", "crc"}
MODEL_CHUNK = 0x03  # u32 offset | bytes
MODEL_END = 0x04
CONFIG = 0x05       # JSON {"method", "rank", "lr", "epochs", "batch", "seed", "cache_mode"}
SAMPLES = 0x06      # see SAMPLES_HEADER
TRAIN = 0x07        # JSON {"epochs"} (optional)
EVAL = 0x08
STATS = 0x09
SAVE = 0x0A
LOAD = 0x0B
RESET = 0x0C        # stops training (cancels a TRAIN), drops tuner and samples
STATUS = 0x0D       # JSON {"after": event number} (optional): training state, kept events, last request
REPLY = 0x0E        # JSON {"seq", "at", "size"}: a part of the last request's reply, as a PART frame
LOG = 0x0F          # the field loop's log file (field.py), as JSON
# replies (board -> host)
OK = 0x80           # JSON
ERROR = 0xEE        # u16 code | UTF-8 message
PART = 0x84         # u8 reply type | u16 reply length | bytes at..at+size of the reply's payload (REPLY)
# events (board -> host, unasked, numbered by their own seq; STATUS returns them again)
PROGRESS = 0x81     # JSON {"epoch", "loss" (null when not finite), "ms", "left"}
DONE = 0x82         # JSON {"epochs", "loss"}: training finished
FAILED = 0x83       # JSON {"code", "error", "epoch"}: training stopped by an error (E_DIVERGED, ...)
EVENTS = (PROGRESS, DONE, FAILED)
# (board -> host, unasked, seq 0, not numbered nor kept): the board is alive in a long epoch
WORKING = 0x85      # JSON {"epoch" (0: the guard's first scoring), "done", "of"}: samples done so far
REQUESTS = (HELLO, MODEL_BEGIN, MODEL_CHUNK, MODEL_END, CONFIG, SAMPLES, TRAIN, EVAL, STATS, SAVE, LOAD, RESET,
            STATUS, REPLY, LOG)
NO_PAYLOAD = (HELLO, MODEL_END, STATS, SAVE, LOAD, RESET, LOG)  # a payload on these is an error

PART_HEADER = "<BH"  # reply type, reply length; then the part's bytes
PART_HEADER_SIZE = 3

# SAMPLES: u8 kind | u8 encoding | u16 count | u16 n_features, then per sample u8 label and
# n_features float32 (ENC_FLOAT32), or a float32 scale and n_features int8 (ENC_INT8, x = q * scale)
SAMPLES_HEADER = "<BBHH"
SAMPLES_HEADER_SIZE = 6
KIND_FINETUNE = 0
KIND_TEST = 1
ENC_FLOAT32 = 0
ENC_INT8 = 1

# error codes
E_CRC = 1           # a frame failed its CRC (its seq may be garbage)
E_OVERSIZE = 2      # length above MAX_PAYLOAD
E_UNKNOWN = 3       # unknown frame type
E_PAYLOAD = 4       # payload of the wrong size or form
E_STATE = 5         # command not valid now (e.g. SAMPLES before MODEL and CONFIG)
E_MODEL = 6         # model file failed validation
E_TUNER = 7         # bad config or sample
E_MEMORY = 8        # out of memory
E_STORAGE = 9       # flash file missing or unreadable
E_BUSY = 10         # training in progress
E_DIVERGED = 11     # training diverged: the loss is not finite (a FAILED event)
E_INTERNAL = 99


def sample_size(encoding, n_features):
    return 1 + (4 * n_features if encoding == ENC_FLOAT32 else 4 + n_features)


def escape(body):
    out = bytearray()
    for b in body:
        if b in _ESCAPED:
            out.append(ESC)
            out.append(b ^ 0x20)
        else:
            out.append(b)
    return out


def encode(ftype, seq, payload=b""):
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload of %d bytes exceeds %d" % (len(payload), MAX_PAYLOAD))
    body = struct.pack(_HEADER, ftype, seq & 0xFFFF, len(payload)) + bytes(payload)
    body += struct.pack("<I", binascii.crc32(body) & 0xFFFFFFFF)
    return bytes([START]) + bytes(escape(body))


def error_payload(code, message):
    """u16 code | the message's UTF-8, cut to MAX_ERROR_MESSAGE bytes: an ERROR frame always fits."""
    text = message.encode()
    if len(text) > MAX_ERROR_MESSAGE:
        text = text[:MAX_ERROR_MESSAGE - 3] + b"..."
    return struct.pack("<H", code) + text


class Decoder:
    """Bytes in, events out: ("frame", type, seq, payload) or ("error", code, message, seq).

    Never raises on garbage: bytes outside a frame are skipped, and a START byte inside a frame
    abandons it and begins a new one (the sender restarted). A frame's bytes are copied in runs
    (between escapes) into one buffer of the largest frame's size, not a byte at a time: a board
    decodes a frame about as fast as its link delivers it. wanted() says how many more bytes the
    frame in progress needs at least: a cap for a read, never a promise (its length field may be
    damaged), so a reader takes only bytes already there, and abandon()s a frame that stops coming."""

    def __init__(self):
        self.buf = bytearray(HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE)  # unescaped bytes of a frame
        self.fill = -1  # bytes of the frame in progress in buf; -1 between frames
        self.escaped = False

    def wanted(self):
        if self.fill < 0:
            return 1
        if self.fill < HEADER_SIZE:
            return HEADER_SIZE - self.fill
        return HEADER_SIZE + struct.unpack_from(_HEADER, self.buf, 0)[2] + CRC_SIZE - self.fill

    def receiving(self):
        """Whether a frame is in progress."""
        return self.fill >= 0

    def abandon(self):
        self.fill = -1

    def feed(self, data, n=None):
        """Events completed by data[:n] (all of data by default)."""
        n = len(data) if n is None else n
        view = memoryview(data)
        events = []
        i = 0
        while i < n:
            if self.fill < 0:  # between frames: skip to the next START
                i = data.find(_START, i, n)
                if i < 0:
                    break
                self.fill, self.escaped = 0, False
                i += 1
                continue
            b = data[i]
            if b == START:  # the sender restarted: drop this frame, begin the next
                self.fill = -1
                continue
            if self.escaped:
                self.buf[self.fill] = b ^ 0x20
                self.fill += 1
                self.escaped = False
                i += 1
            elif b == ESC:
                self.escaped = True
                i += 1
                continue
            else:  # a run of plain bytes, up to the next START or ESC or the frame's end
                stop = min(n, i + self.wanted())
                for mark in (_START, _ESC):
                    k = data.find(mark, i, stop)
                    if k >= 0:
                        stop = k
                self.buf[self.fill:self.fill + stop - i] = view[i:stop]
                self.fill += stop - i
                i = stop
            event = self._frame_done()
            if event is not None:
                events.append(event)
        return events

    def _frame_done(self):
        if self.fill < HEADER_SIZE:
            return None
        ftype, seq, length = struct.unpack_from(_HEADER, self.buf, 0)
        if length > MAX_PAYLOAD:
            self.fill = -1
            return ("error", E_OVERSIZE, "frame length %d exceeds %d" % (length, MAX_PAYLOAD), seq)
        end = HEADER_SIZE + length
        if self.fill < end + CRC_SIZE:
            return None
        self.fill = -1
        crc = struct.unpack_from("<I", self.buf, end)[0]
        if binascii.crc32(memoryview(self.buf)[:end]) & 0xFFFFFFFF != crc:
            return ("error", E_CRC, "frame failed its CRC", seq)
        return ("frame", ftype, seq, bytes(self.buf[HEADER_SIZE:end]))
