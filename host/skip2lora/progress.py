"""Progress for long host work: a tqdm bar on a terminal; elsewhere (a log, a pipe) plain lines, at
most one every PLAIN_EVERY seconds and one at the end, with no escape codes and no redraws."""
import sys
import time

from tqdm import tqdm

PLAIN_EVERY = 1.5  # seconds: no silence over ~2 s


def interactive():
    return sys.stdout.isatty() and sys.stderr.isatty()


class PlainProgress:
    """The part of tqdm's interface the CLI uses, as plain text lines on stdout."""

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix = ""
        self.last = time.monotonic()
        self.printed_at = None  # the count last printed

    def set_postfix(self, **values):
        self.postfix = ", ".join("%s %s" % kv for kv in values.items())

    def update(self, n=1):
        self.n += n
        if self.printed_at is None or time.monotonic() - self.last >= PLAIN_EVERY:
            self._line()

    def _line(self):
        self.last, self.printed_at = time.monotonic(), self.n
        print("%s: %d/%s %s%s" % (self.desc, self.n, self.total if self.total is not None else "?", self.unit,
                                  "; " + self.postfix if self.postfix else ""), flush=True)

    def close(self):
        if self.n != self.printed_at:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Off(PlainProgress):
    def _line(self):
        pass


def bar(total, desc, enabled=True, unit="steps"):
    """A progress bar of `total` steps: tqdm on a terminal, plain lines otherwise, nothing if not enabled."""
    if not enabled:
        return _Off(total, desc, unit)
    if interactive():
        return tqdm(total=total, desc=desc, unit=" " + unit, leave=False)
    return PlainProgress(total, desc, unit)
