# A field learner's labelled samples on flash, so that a power cut loses at most the readings it
# had not added yet: a header (magic, the model file's CRC, the input's length), then one record
# per sample in the order they came: its label, its input's exponent, its int8 input. Each new
# sample is appended (a few dozen bytes, not the whole ring); the file is rewritten with only the
# ring's samples, oldest first (storage.write_atomic), when a learner opens it and once it holds
# twice the ring. A record cut short by a power cut is dropped at the next open.
import struct

from s2l import storage

MAGIC = b"S2LS"
HEADER = "<4sIH"


class SampleFile:
    def __init__(self, path, tuner, crc):
        self.path, self.tuner = path, tuner
        self.header = struct.pack(HEADER, MAGIC, crc, tuner.model.dims[0])
        self.record = bytearray(2 + tuner.model.dims[0])  # label, then what tuner.record() writes
        self.sample = memoryview(self.record)[1:]
        self.records = 0  # in the file now

    def restore(self):
        """The samples of a file made for this model into the tuner (the ring keeps the latest), then
        the file rewritten with just those; the number of records read."""
        n = 0
        path, _ = storage.recover(self.path, self._check, read=lambda path: path)  # a cut rewrite
        if path is not None:
            with open(path, "rb") as f:
                f.seek(len(self.header))
                while f.readinto(self.record) == len(self.record):
                    self.tuner.add_record(self.sample, self.record[0])
                    n += 1
        self.rewrite()
        return n

    def append(self):
        """The sample the tuner stored last, at the file's end."""
        if self.records >= 2 * self.tuner.n_planned:
            self.rewrite()
            return
        self._fill(self.tuner.last)
        with open(self.path, "ab") as f:
            f.write(self.record)
        self.records += 1

    def rewrite(self):
        storage.write_atomic(self.path, self._chunks())
        self.records = self.tuner.n_samples

    def _chunks(self):
        yield self.header
        for k in self.tuner.ring_order():
            self._fill(k)
            yield self.record

    def _check(self, path):
        with open(path, "rb") as f:
            if f.read(len(self.header)) != self.header:
                raise ValueError("not this model's samples")

    def _fill(self, k):
        self.record[0] = self.tuner.record(k, self.sample)
