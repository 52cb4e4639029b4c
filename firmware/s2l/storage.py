# Files on flash that survive a power cut at any step. write_atomic never removes the only good
# copy: the new data goes to NAME.new and is read back, the old file moves to NAME.old, the new
# one takes the name, then NAME.old goes. recover() at boot keeps the first copy that passes its
# check (NAME, then NAME.new, then NAME.old), puts it in place and removes the rest.
import binascii
import os

NEW = ".new"
OLD = ".old"
_BLOCK = 512
# what recover() found, as HELLO reports it
OK = "ok"                # NAME was valid
RECOVERED = "recovered"  # a cut write was finished (NAME.new) or rolled back (NAME.old)
MISSING = "none"         # no copy at all
INVALID = "invalid"      # copies exist, none passes its check (the next write replaces them)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def read(path):
    with open(path, "rb") as f:
        return f.read()


def _crc_of_file(path):
    # in blocks: a read-back of a large model must not hold a second copy in RAM
    crc, buf = 0, bytearray(_BLOCK)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return crc
            crc = binascii.crc32(memoryview(buf)[:n], crc)


def write_atomic(path, data):
    """data: bytes, or an iterable of byte chunks written in turn (a large file never whole in RAM)."""
    new, old = path + NEW, path + OLD
    remove(new)  # a stale half-written copy, never the only good one
    if exists(path):
        remove(old)  # NAME is in place, so NAME.old is no longer needed
    crc = 0
    with open(new, "wb") as f:
        for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
            f.write(chunk)
            crc = binascii.crc32(chunk, crc)
    if _crc_of_file(new) != crc:
        remove(new)
        raise OSError("%s did not read back as written" % new)
    if exists(path):
        os.rename(path, old)
    os.rename(new, path)
    remove(old)


def recover(path, check, read=read):
    """(data of the valid copy or None, state). check(data) raises on an invalid copy; read(path)
    gives a copy's data (a board reads a model straight into its arena)."""
    found = False
    for suffix in ("", NEW, OLD):
        candidate = path + suffix
        if not exists(candidate):
            continue
        found = True
        try:
            data = read(candidate)
            check(data)
        except Exception:  # unreadable or failing its check: try the next copy
            continue
        if suffix:
            remove(path)
            os.rename(candidate, path)
        for other in (NEW, OLD):
            remove(path + other)
        return data, OK if not suffix else RECOVERED
    return None, INVALID if found else MISSING
