"""What each Thumb routine of firmware/s2l/thumb_asm.py computes, in Python that runs under
MicroPython and CPython. ikernels_thumb.py's viper glue runs on the unix port with these in the
place of the assembler (sys.modules["s2l.thumb_asm"]), so that the glue is checked against the
portable twin; with RECORD set, every call prints its parameters and its buffers before and after
("T" and a JSON line), and the emulator replays them on the routines' machine code.

Buffers are raw memory, as the routines see them: little-endian, bytes and int16 sign-extended by
the reader, int32 sums wrapping as a machine word's."""
import json
import struct

RECORD = False


def _get(buf, fmt, at):
    return struct.unpack_from(fmt, buf, at)[0]


def _put(buf, fmt, at, v):
    struct.pack_into(fmt, buf, at, v)


def _word(v):
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _rowsums(blk, packed, rb, acc):
    xo, n_out, n_in, size, row_bytes, bits = blk[0], blk[1], blk[2], blk[3], blk[4], blk[5]
    k = 0
    for r in range(n_out):
        base = r * row_bytes
        for c0 in range(0, n_in, size):
            total = 0
            for c in range(c0, min(c0 + size, n_in)):
                p = c * bits
                v = _get(packed, "<B", base + (p >> 3)) >> (p & 7)
                if (p & 7) + bits > 8:
                    v |= _get(packed, "<B", base + (p >> 3) + 1) << (8 - (p & 7))
                v &= (1 << bits) - 1
                if v >> (bits - 1):
                    v -= 1 << bits
                total += v * _get(rb, "<b", xo + c)
            _put(acc, "<i", 4 * k, _word(total))
            k += 1


def _wsum(blk, w, v, out):
    wo, os, ts, n_t, n_o, vo, v8, oo = blk[0], blk[1], blk[2], blk[3], blk[4], blk[5], blk[6], blk[7]
    for o in range(n_o):
        total = 0
        for t in range(n_t):
            x = _get(v, "<b", vo + t) if v8 else _get(v, "<i", vo + 4 * t)
            total += _get(w, "<h", wo + o * os + t * ts) * x
        _put(out, "<i", oo + 4 * o, _word(total))


def _outer(blk, w, u, v):
    wo, uo, vo, n_j, n_c, u8, sh, half, lim = (blk[0], blk[1], blk[2], blk[3], blk[4], blk[5], blk[6], blk[7],
                                               blk[8])
    for j in range(n_j):
        uj = _get(u, "<b", uo + j) if u8 else _get(u, "<i", uo + 4 * j)
        if not uj:
            continue
        for c in range(n_c):
            d = _word(uj * _get(v, "<i", vo + 4 * c))
            if sh >= 0:
                d = _word(d + half) >> sh
            elif d > lim:
                d = 65534
            elif d < -lim:
                d = -65534
            else:
                d = _word(d << -sh)
            at = wo + 2 * (j * n_c + c)
            x = _word(_get(w, "<h", at) + d)
            _put(w, "<h", at, 32767 if x > 32767 else (-32767 if x < -32767 else x))


def _recorded(name, fn):
    def call(blk, b1, b2, b3):
        if not RECORD:
            return fn(blk, b1, b2, b3)
        bufs = [b1, b2, b3]
        alias = [next(k for k in range(3) if bufs[k] is b) for b in bufs]
        before = [bytes(b).hex() for b in bufs]
        fn(blk, b1, b2, b3)
        print("T", json.dumps({"f": name, "blk": list(blk), "alias": alias, "in": before,
                               "out": [bytes(b).hex() for b in bufs]}))
    return call


rowsums = _recorded("rowsums", _rowsums)
wsum = _recorded("wsum", _wsum)
outer = _recorded("outer", _outer)
