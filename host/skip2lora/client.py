"""The host side of the serial link: a client over any pyserial URL (a device path, socket://host:port,
loop://), speaking the frames of firmware/s2l/frames.py to a board or the emulator."""
import binascii
import json
import struct
import time

import numpy as np
import serial

from s2l import frames as F

__all__ = ["Client", "BoardError", "LinkError", "encode_samples", "dequantize_like_the_board"]


class LinkError(RuntimeError):
    """The board is silent, keeps corrupting frames, or speaks another protocol version."""


class BoardError(RuntimeError):
    """The board answered ERROR: `code` (frames.E_*) and its message."""

    def __init__(self, code, message):
        super().__init__("board error %d: %s" % (code, message))
        self.code, self.message = code, message


def _int8(x):
    # as the board decodes ENC_INT8: x ~ q * scale, scale a float32
    scale = np.float32(np.abs(x).max() / 127.0) if np.abs(x).max() > 0 else np.float32(1.0)
    q = np.clip(np.round(x / scale), -127, 127).astype(np.int8)
    return scale, q


def dequantize_like_the_board(X, encoding):
    """The values the board holds after receiving X with `encoding` (for reference comparisons)."""
    X = np.asarray(X, np.float32)
    if encoding == F.ENC_FLOAT32:
        return X
    return np.stack([q.astype(np.float32) * s for s, q in map(_int8, X)])


def encode_samples(X, y, kind, encoding=F.ENC_INT8):
    """SAMPLES payloads for (X, y), as many samples per frame as fit; (payloads, sample bytes)."""
    X = np.asarray(X, np.float32)
    n_features = X.shape[1]
    size = F.sample_size(encoding, n_features)
    per_frame = (F.MAX_PAYLOAD - F.SAMPLES_HEADER_SIZE) // size
    if per_frame < 1:
        raise ValueError("a sample of %d features does not fit in one frame" % n_features)
    payloads = []
    for start in range(0, len(y), per_frame):
        rows = []
        for x, label in zip(X[start:start + per_frame], y[start:start + per_frame]):
            if encoding == F.ENC_FLOAT32:
                rows.append(struct.pack("<B", int(label)) + x.astype("<f4").tobytes())
            else:
                scale, q = _int8(x)
                rows.append(struct.pack("<Bf", int(label), scale) + q.tobytes())
        payloads.append(struct.pack(F.SAMPLES_HEADER, kind, encoding, len(rows), n_features) + b"".join(rows))
    return payloads, len(y) * size


class Client:
    def __init__(self, url, baudrate=115200, timeout=5.0, retries=3):
        try:
            self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.05)
        except (serial.SerialException, ValueError) as e:
            raise LinkError("cannot open %s: %s" % (url, e)) from None
        self.url, self.timeout, self.retries = url, timeout, retries
        self.decoder = F.Decoder()
        self.seq = 0
        self.pending = []
        self.bytes_sent = self.bytes_received = 0

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- frames ------------------------------------------------------------------------------------
    def _events(self, deadline):
        while not self.pending:
            if time.monotonic() > deadline:
                return None
            data = self.port.read(4096)
            if data:
                self.bytes_received += len(data)
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def request(self, ftype, payload=b"", timeout=None, on_frame=None):
        """Send one request; return its OK reply's JSON. Retries (same seq: the board answers a
        repeat without acting twice) on silence and on CRC errors either way."""
        self.seq = (self.seq + 1) & 0xFFFF
        frame = F.encode(ftype, self.seq, payload)
        for attempt in range(self.retries + 1):
            self.port.write(frame)
            self.bytes_sent += len(frame)
            deadline = time.monotonic() + (timeout or self.timeout)
            while True:
                event = self._events(deadline)
                if event is None or event[0] == "error":
                    break  # silence or a corrupted reply: send again
                _, rtype, seq, body = event
                if seq != self.seq:
                    continue  # a stale reply to an earlier attempt
                if rtype == F.ERROR:
                    code = struct.unpack_from("<H", body, 0)[0]
                    if code == F.E_CRC:
                        break  # the board got our frame damaged
                    raise BoardError(code, body[2:].decode("utf-8", "replace"))
                if rtype == F.OK:
                    return json.loads(body)
                if on_frame:
                    on_frame(rtype, json.loads(body))
        raise LinkError("no valid reply from %s after %d attempts (is it a skip2lora board, "
                        "running main.py?)" % (self.url, self.retries + 1))

    # -- commands ----------------------------------------------------------------------------------
    def hello(self):
        info = self.request(F.HELLO)
        if info.get("protocol") != F.PROTOCOL_VERSION:
            raise LinkError("the board speaks protocol %r, this host %d: update the firmware" % (
                info.get("protocol"), F.PROTOCOL_VERSION))
        return info

    def upload_model(self, model_bytes, chunk=F.MAX_PAYLOAD - 4):
        self.request(F.MODEL_BEGIN, json.dumps({"size": len(model_bytes), "crc": binascii.crc32(model_bytes)}).encode())
        for at in range(0, len(model_bytes), chunk):
            self.request(F.MODEL_CHUNK, struct.pack("<I", at) + model_bytes[at:at + chunk])
        return self.request(F.MODEL_END)

    def configure(self, **config):
        return self.request(F.CONFIG, json.dumps(config).encode())

    def send_samples(self, X, y, kind, encoding=F.ENC_INT8, on_frame=None):
        """Stream samples; returns the number of sample-payload bytes (for the link benchmark)."""
        payloads, sample_bytes = encode_samples(X, y, kind, encoding)
        for k, payload in enumerate(payloads):
            self.request(F.SAMPLES, payload)
            if on_frame:
                on_frame(k + 1, len(payloads))
        return sample_bytes

    def train(self, epochs=None, on_progress=None):
        """Train; blocks until DONE, calling on_progress(progress dict) each epoch."""
        started = self.request(F.TRAIN, json.dumps({"epochs": epochs} if epochs else {}).encode())
        done = []
        while not done:
            event = self._events(time.monotonic() + max(self.timeout, 600.0))
            if event is None:
                raise LinkError("the board went silent while training")
            if event[0] != "frame":
                continue
            _, rtype, _, body = event
            if rtype == F.PROGRESS and on_progress:
                on_progress(json.loads(body))
            elif rtype == F.DONE:
                done.append(json.loads(body))
            elif rtype == F.ERROR:
                raise BoardError(struct.unpack_from("<H", body, 0)[0], body[2:].decode("utf-8", "replace"))
        return dict(started, **done[0])

    def evaluate(self):
        """Accuracy and confusion over the test samples scored since TRAIN (or CONFIG); a confusion
        matrix too large for one frame comes a few rows at a time."""
        result = self.request(F.EVAL)
        if "confusion" not in result:
            nc, result["confusion"] = result["classes"], []
            step = max(1, (F.MAX_PAYLOAD - 128) // (8 * nc) - 1)
            for first in range(0, nc, step):
                rows = [first, min(nc, first + step)]
                result["confusion"] += self.request(F.EVAL, json.dumps({"rows": rows}).encode())["confusion"]
        result.pop("rows", None)
        return result

    def stats(self):
        return self.request(F.STATS)

    def save(self):
        return self.request(F.SAVE)

    def load(self):
        return self.request(F.LOAD)

    def reset(self):
        return self.request(F.RESET)
