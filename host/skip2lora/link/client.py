"""The host side of the serial link: a client over any pyserial URL (a device path, socket://host:port,
loop://), speaking the frames of firmware/s2l/frames.py to a board or the emulator.

A link may be noisy: every request is retried (same seq: the board answers a repeat without acting
twice) with an adaptive timeout that backs off on silence; a long reply that keeps arriving damaged
is fetched in parts (REPLY); SAMPLES frames and MODEL chunks shrink when frames keep failing, after
STATUS says whether the board already acted on the big one; training events lost on the way are
asked for again (STATUS). Retransmissions and faults are counted in `Client.counts`."""
import binascii
import errno
import json
import struct
import time

import numpy as np
import serial

from s2l import frames as F

from ..train.modelfile import normalise, read_model_file

__all__ = ["Client", "BoardError", "LinkError", "Stopped", "encode_samples", "dequantize_like_the_board"]

MIN_PAYLOAD = 64        # frames never shrink below this (one sample of up to ~50 int8 features)
SHRINK_AFTER = 3        # failed attempts of one frame before its data is sent in smaller frames
PART_AFTER = 3          # damaged copies of one reply before it is fetched in parts
GAP = 0.05              # s without a byte in the middle of a frame: the rest was lost
MIN_WAIT, FIRST_WAIT = 0.05, 0.5  # s: the shortest wait for a reply; the first, before any was timed
REPL_MARKS = (b">>> ", b"MicroPython v", b"Traceback (most recent call last)", b"raw REPL")


class LinkError(RuntimeError):
    """The port cannot be used, the board is silent or not running main.py, or speaks another version."""


class Stopped(LinkError):
    """Interrupted (Ctrl-C) during a board command; the board confirmed it is idle."""


class BoardError(RuntimeError):
    """The board answered ERROR (or training FAILED): `code` (frames.E_*) and its message."""

    def __init__(self, code, message):
        super().__init__("board error %d: %s" % (code, message))
        self.code, self.message = code, message


def _int8(x):
    # as the board decodes ENC_INT8: x ~ q * scale, scale a float32
    scale = np.float32(np.abs(x).max() / 127.0) if np.abs(x).max() > 0 else np.float32(1.0)
    q = np.clip(np.round(x / scale), -127, 127).astype(np.int8)
    return scale, q


def dequantize_like_the_board(X, encoding, norm=None):
    """The network's input the board holds after receiving raw readings X with `encoding`, for a
    model with normalisation `norm` (for reference comparisons)."""
    X = normalise(X, norm)
    if encoding == F.ENC_FLOAT32:
        return X
    return np.stack([q.astype(np.float32) * s for s, q in map(_int8, X)])


def _sample_rows(X, y, encoding, norm=None):
    # float32 samples go raw (the board normalises them); an int8 sample's one scale cannot hold
    # features of different ranges, so int8 samples carry the network's input, normalised here
    if encoding == F.ENC_INT8:
        X = normalise(X, norm)
    rows = []
    for x, label in zip(np.asarray(X, np.float32), y):
        if encoding == F.ENC_FLOAT32:
            rows.append(struct.pack("<B", int(label)) + x.astype("<f4").tobytes())
        else:
            scale, q = _int8(x)
            rows.append(struct.pack("<Bf", int(label), scale) + q.tobytes())
    return rows


def _samples_payload(rows, kind, encoding, n_features):
    return struct.pack(F.SAMPLES_HEADER, kind, encoding, len(rows), n_features) + b"".join(rows)


def encode_samples(X, y, kind, encoding=F.ENC_INT8, max_payload=F.MAX_PAYLOAD, norm=None):
    """SAMPLES payloads for raw readings (X, y) to a model with normalisation `norm`, as many
    samples per frame as fit; (payloads, sample bytes)."""
    n_features = np.asarray(X).shape[1]
    per_frame = _per_frame(encoding, n_features, max_payload)
    rows = _sample_rows(X, y, encoding, norm)
    payloads = [_samples_payload(rows[at:at + per_frame], kind, encoding, n_features)
                for at in range(0, len(rows), per_frame)]
    return payloads, len(y) * F.sample_size(encoding, n_features)


def _per_frame(encoding, n_features, max_payload):
    per_frame = (max_payload - F.SAMPLES_HEADER_SIZE) // F.sample_size(encoding, n_features)
    if per_frame < 1:
        raise ValueError("a sample of %d features does not fit in one frame" % n_features)
    return per_frame


def open_port(url, baudrate):
    """The port, or a LinkError that says which problem it is and what to do."""
    try:  # a device path is locked against a second user; URLs (socket://, loop://) are not files
        return serial.serial_for_url(url, baudrate=baudrate, timeout=0.02,
                                     **({} if "://" in url else {"exclusive": True}))
    except (serial.SerialException, OSError, ValueError) as e:
        code = getattr(e, "errno", None)
        text = str(e)
        if code == errno.ENOENT or "No such file" in text:
            raise LinkError("no port %s: is the board plugged in? (`python -m serial.tools.list_ports` "
                            "lists the ports)" % url) from None
        if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text or "busy" in text.lower():
            raise LinkError("port %s is busy: another program holds it (mpremote, a serial monitor, "
                            "another skip2lora); close it and try again" % url) from None
        if code == errno.EACCES or "ermission" in text:
            raise LinkError("no permission to open %s: add your user to the dialout group (then log in "
                            "again)" % url) from None
        raise LinkError("cannot open %s: %s" % (url, e)) from None


class Client:
    def __init__(self, url, baudrate=115200, timeout=3.0, retries=3):
        """timeout: the longest wait for one reply (backoff caps there); retries: attempts in a
        row that get no answer at all before the board counts as silent."""
        self.port = open_port(url, baudrate)
        self.url, self.timeout, self.retries = url, timeout, retries
        self.decoder = F.Decoder()
        self.seq = 0
        self.pending = []
        self.bytes_sent = self.bytes_received = 0
        self.max_payload = F.MAX_PAYLOAD  # HELLO may lower it; repeated failures shrink it
        self.srtt = None  # smoothed round trip of answered requests, s
        self.counts = {"requests": 0, "retransmissions": 0, "damaged": 0, "timeouts": 0,
                       "reply_parts": 0, "shrinks": 0}
        self.framed = False  # any valid frame seen yet (else raw bytes may be a REPL)
        self.raw = bytearray()
        self.events = []  # training events (type, number, body) not yet handled
        self.last_event = 0  # number of the last training event handled
        self.working = None  # the last WORKING frame's fields (the board in a long epoch), and when
        self.working_at = 0.0
        self.norm = None  # the normalisation of the model uploaded: int8 samples are sent normalised

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            if exc_type is KeyboardInterrupt:
                self.stop()
        finally:
            self.close()

    # -- frames ------------------------------------------------------------------------------------
    def _read(self):
        """Feed what arrived to the decoder; True if the bytes left a frame unfinished."""
        try:
            data = self.port.read(4096)
        except (serial.SerialException, OSError) as e:
            raise LinkError("the port %s failed: %s (board unplugged or reset?)" % (self.url, e)) from None
        if not data:
            return None
        self.bytes_received += len(data)
        events = self.decoder.feed(data)
        if not self.framed:  # a board's frame (an echo of our own requests is not one)
            self.framed = any(e[0] == "frame" and e[1] not in F.REQUESTS for e in events)
            if len(self.raw) < 4096:
                self.raw += data
        self.pending += events
        if events and all(e[0] == "frame" and e[1] in F.REQUESTS for e in events):
            return None  # our own requests echoed (a loopback, or a REPL): not an answer
        return not events

    def _await(self, seq, wait):
        """("reply", type, body), ("damaged",), ("silent",) or ("busy",) (no reply, but WORKING
        frames: the board answers after its epoch) for the request `seq`."""
        deadline = time.monotonic() + wait
        heard, dangling, last_byte, working = False, False, 0.0, False
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if event[0] == "error":
                    self.counts["damaged"] += 1
                    return ("damaged",)
                _, rtype, rseq, body = event
                if rtype in F.EVENTS:
                    self.events.append((rtype, rseq, body))  # for train(), which is waiting for them
                elif rtype == F.WORKING:
                    working = self._working(body)
                elif rseq == seq and rtype in (F.OK, F.ERROR, F.PART):
                    if rtype == F.ERROR and len(body) >= 2 and struct.unpack_from("<H", body)[0] in (F.E_CRC, F.E_OVERSIZE):
                        self.counts["damaged"] += 1  # the board got our frame damaged
                        return ("damaged",)
                    return ("reply", rtype, body)
            now = time.monotonic()
            if dangling and now - last_byte > GAP:
                self.counts["damaged"] += 1  # a frame began and stopped: bytes were lost
                return ("damaged",)
            if now > deadline:
                return ("busy",) if working else (("damaged",) if heard else ("silent",))
            got = self._read()
            if got is not None:
                heard, dangling, last_byte = True, got, time.monotonic()

    def _working(self, body):
        self.working, self.working_at = json.loads(body), time.monotonic()
        return True

    def _wait(self, limit):
        if self.srtt is None:
            return min(FIRST_WAIT, limit)
        return min(max(MIN_WAIT, 3 * self.srtt + 0.02), limit)

    def _exchange(self, ftype, payload, timeout=None, max_attempts=None, retries=None):
        """(reply type, body) of one request, or None after max_attempts failed ones. Raises
        LinkError after `retries` silent attempts in a row, BoardError on ERROR."""
        self.seq = (self.seq + 1) & 0xFFFF
        seq, frame = self.seq, F.encode(ftype, self.seq, payload)
        limit = timeout or self.timeout
        retries = self.retries if retries is None else retries
        wait, silent, damaged, attempt, busy = self._wait(limit), 0, 0, 0, 0
        self.counts["requests"] += 1
        while True:
            if attempt:
                self.counts["retransmissions"] += 1
            attempt += 1
            self.port.write(frame)
            self.bytes_sent += len(frame)
            sent = time.monotonic()
            outcome = self._await(seq, wait)
            if outcome[0] == "reply":
                rtt = time.monotonic() - sent
                self.srtt = rtt if self.srtt is None else 0.8 * self.srtt + 0.2 * rtt
                return self._reply(outcome[1], outcome[2])
            if outcome[0] == "busy":  # alive, in a long epoch: it answers when the epoch ends
                silent, busy, wait = 0, busy + 1, limit
            elif outcome[0] == "silent" or self._repl():
                self.counts["timeouts"] += 1
                silent += 1
                if silent > retries and wait >= limit:
                    raise self._silent()
                if silent > 1:  # back off from the second silence on: the board may be slow, not gone
                    wait = min(2 * wait, limit)  # (one lost request is common on a noisy link)
            else:
                silent = 0
                damaged += 1
                # a STATUS that asks for events is kept by the board when it carries some: in parts too
                if damaged >= PART_AFTER and not max_attempts and ftype != F.REPLY and \
                        (ftype != F.STATUS or b'"after"' in payload):
                    got = self._reply_in_parts(seq, ftype)
                    if got is not None:
                        return got
                    damaged = 0
            if max_attempts and attempt >= max_attempts:
                return None
            if attempt - busy >= 100 * (retries + 1):
                raise LinkError("no intact reply from %s after %d attempts: the link is too noisy" % (
                    self.url, attempt))

    def _reply(self, rtype, body):
        if rtype == F.ERROR:
            raise BoardError(struct.unpack_from("<H", body, 0)[0], body[2:].decode("utf-8", "replace"))
        return rtype, body

    def _repl(self):
        return not self.framed and any(mark in self.raw for mark in REPL_MARKS)

    def _silent(self):
        if self._repl():
            return LinkError("the board at %s answers with the MicroPython REPL, not main.py: install the "
                             "firmware (skip2lora flash --port %s) or soft-reset it (Ctrl-D)" % (self.url, self.url))
        if not self.framed:
            return LinkError("no answer from %s: is main.py running on the board? Press its reset "
                             "button, or install it: skip2lora flash --port %s" % (self.url, self.url))
        return LinkError("the board at %s stopped answering (after %d requests): check the cable, "
                         "then reset the board" % (self.url, self.counts["requests"]))

    def _status(self, events=False, **kw):
        """The board's STATUS; with the events after the last one handled if `events`."""
        ask = {}
        if events:  # one at a time once the link has damaged frames: short replies get through
            ask = {"after": self.last_event, "limit": 1} if self.counts["damaged"] else {"after": self.last_event}
        return json.loads(self._exchange(F.STATUS, json.dumps(ask).encode(), **kw)[1])

    def _reply_in_parts(self, seq, ftype):
        """The reply to `seq`, fetched in small parts, if the board has acted on that request."""
        last = self._status()["last"]
        if not last or last[0] != seq or last[1] != ftype:
            return None  # the board has not acted on it: keep sending it
        body, total, rtype = b"", None, None
        size = max(MIN_PAYLOAD, min(self.max_payload, 256)) - F.PART_HEADER_SIZE
        while total is None or len(body) < total:
            _, part = self._exchange(F.REPLY, json.dumps({"seq": seq, "at": len(body), "size": size}).encode())
            rtype, total = struct.unpack_from(F.PART_HEADER, part, 0)
            body += part[F.PART_HEADER_SIZE:]
            self.counts["reply_parts"] += 1
        return self._reply(rtype, body)

    def request(self, ftype, payload=b"", timeout=None, **kw):
        """Send one request; return its OK reply's JSON."""
        return json.loads(self._exchange(ftype, payload, timeout, **kw)[1])

    def _shrinkable(self, ftype, payload):
        """Send a frame that may be re-sent as smaller ones: its JSON reply, or None when it kept
        failing and the board has not acted on it (the caller then sends its data in smaller frames)."""
        got = self._exchange(ftype, payload, max_attempts=SHRINK_AFTER if self.max_payload > MIN_PAYLOAD else None)
        if got is None:  # did the board act on it, and only the replies were lost?
            got = self._reply_in_parts(self.seq, ftype)
        if got is not None:
            return json.loads(got[1])
        self.max_payload = max(MIN_PAYLOAD, self.max_payload // 2)
        self.counts["shrinks"] += 1
        return None

    # -- commands ----------------------------------------------------------------------------------
    def hello(self):
        try:
            info = self.request(F.HELLO)
        except BoardError as e:
            raise LinkError("the board at %s does not understand HELLO (%s): it runs another protocol; "
                            "update the firmware (skip2lora flash)" % (self.url, e.message)) from None
        if info.get("protocol") != F.PROTOCOL_VERSION:
            raise LinkError("the board speaks protocol %r, this host %d: update the firmware" % (
                info.get("protocol"), F.PROTOCOL_VERSION))
        self.max_payload = min(self.max_payload, info.get("max_payload") or F.MAX_PAYLOAD)
        return info

    def upload_model(self, model_bytes):
        """Upload a model file (validated first: a bad one raises ModelError before a byte is sent)."""
        self.norm = read_model_file(model_bytes).norm
        self.request(F.MODEL_BEGIN, json.dumps({"size": len(model_bytes), "crc": binascii.crc32(model_bytes)}).encode())
        at = 0
        while at < len(model_bytes):  # chunks carry their offset: re-sending one is harmless
            chunk = self.max_payload - 4
            if self._shrinkable(F.MODEL_CHUNK, struct.pack("<I", at) + model_bytes[at:at + chunk]) is not None:
                at += chunk
        return self.request(F.MODEL_END)

    def configure(self, **config):
        return self.request(F.CONFIG, json.dumps(config).encode())

    def send_samples(self, X, y, kind, encoding=F.ENC_INT8, on_frame=None):
        """Stream raw readings, as many per frame as fit (fewer once frames keep failing); int8
        samples are normalised with the uploaded model's constants first. Returns the
        number of sample-payload bytes (for the link benchmark). A SAMPLES frame is re-sent with
        its seq until answered, and split only once STATUS shows the board did not store it."""
        n_features = np.asarray(X).shape[1]
        rows = _sample_rows(X, y, encoding, self.norm)
        at = 0
        while at < len(rows):
            # at least one sample a frame, however small frames have become
            per_frame = _per_frame(encoding, n_features, max(self.max_payload, F.SAMPLES_HEADER_SIZE + F.sample_size(
                encoding, n_features)))
            batch = rows[at:at + per_frame]
            if self._shrinkable(F.SAMPLES, _samples_payload(batch, kind, encoding, n_features)) is not None:
                at += len(batch)
                if on_frame:
                    on_frame(at, len(rows))
        return len(rows) * F.sample_size(encoding, n_features)

    def _newer(self, number):
        return number != self.last_event and (number - self.last_event) & 0xFFFF < 0x8000

    def _next_events(self):
        """Training events in order, from the link and, where one is missing, from STATUS."""
        self.pending, frames = [], self.pending
        self.events += [e[1:] for e in frames if e[0] == "frame" and e[1] in F.EVENTS]
        for e in frames:
            if e[0] == "frame" and e[1] == F.WORKING:
                self._working(e[3])
        arrived, self.events = self.events, []
        out = []
        for rtype, number, body in sorted((e for e in arrived if self._newer(e[1])),
                                          key=lambda e: (e[1] - self.last_event) & 0xFFFF):
            if number != (self.last_event + 1) & 0xFFFF:
                out += self._fetch_events(until=number)[0]
            # (still a gap: those events are older than the board keeps, lost for good)
            self.last_event = number
            out.append((rtype, json.loads(body)))
        return out

    def _fetch_events(self, until=None, **kw):
        """Events after the last one handled (and before `until`, if given), from STATUS."""
        out = []
        while True:
            status = self._status(events=True, **kw)
            for n, t, fields in status["events"]:
                if n != (self.last_event + 1) & 0xFFFF or n == until:
                    break  # not the next one: older than the board keeps, or already here
                self.last_event = n
                out.append((t, fields))
            else:
                if status["events"] and status["event"] != self.last_event:
                    continue  # the board holds more than one STATUS carries
            return out, status

    def train(self, epochs=None, on_progress=None, heartbeat=2.0, on_working=None):
        """Train; blocks until DONE, calling on_progress(progress dict) each epoch. A FAILED event
        (divergence, out of memory) raises BoardError. When no event (nor WORKING frame: the board
        in a long epoch, at least once a second) came for `heartbeat` s (or twice the longest epoch
        so far) the board is asked for its state: a lost event is fetched, a dead board is noticed
        in seconds. on_working(fields) sees each WORKING frame (the samples of a long epoch done)."""
        started = self.request(F.TRAIN, json.dumps({"epochs": epochs} if epochs else {}).encode())
        self.last_event = started["event"]
        longest, quiet_since = 0.0, time.monotonic()
        while True:
            self._read()
            got = self._next_events()
            if self.working_at > quiet_since:
                quiet_since = self.working_at
                if on_working:
                    on_working(self.working)
            quiet = max(heartbeat, 2 * longest)
            if not got and time.monotonic() - quiet_since > quiet:
                # the heartbeat, with quick retries: a dead board is noticed in seconds
                got, status = self._fetch_events(timeout=quiet, retries=2)
                if not got and not status["busy"] and status["event"] == self.last_event:
                    raise LinkError("the board stopped training without a word (was it reset?)")
                quiet_since = time.monotonic()
            for rtype, fields in got:
                quiet_since = time.monotonic()
                if rtype == F.PROGRESS:
                    longest = max(longest, fields["ms"] / 1000)
                    if on_progress:
                        on_progress(fields)
                elif rtype == F.FAILED:
                    raise BoardError(fields["code"], fields["error"])
                else:
                    return dict(started, **fields)

    def stop(self):
        """After Ctrl-C (Client's `with` block does this): RESET the board (it stops training and
        drops its samples), wait for it to confirm, and raise Stopped. A second Ctrl-C gives up."""
        self.pending.clear()
        try:
            self.request(F.RESET)
        except KeyboardInterrupt:
            raise LinkError("interrupted twice; the board may still be busy: RESET it or press its reset button") from None
        raise Stopped("stopped; the board is idle")

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

    def status(self):
        return self._status()

    def field_log(self):
        """The field loop's log (firmware/field.py) as the board last wrote it."""
        return self.request(F.LOG)

    def link_report(self):
        """One line on what the link cost: retransmissions and their causes."""
        c = self.counts
        return ("link: %d requests, %d retransmissions (%d damaged frames, %d timeouts), %d reply parts, "
                "frames shrunk %d times (now %d bytes)" % (c["requests"], c["retransmissions"], c["damaged"],
                                                          c["timeouts"], c["reply_parts"], c["shrinks"], self.max_payload))
