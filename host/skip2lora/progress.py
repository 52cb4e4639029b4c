"""Progress for long host work: a tqdm bar on a terminal; elsewhere (a log, a pipe) plain lines, at
most one every PLAIN_EVERY seconds and one at the end, with no escape codes and no redraws. A step
longer than PLAIN_EVERY (an epoch under the WebAssembly MicroPython takes 2-4 s) repeats the line,
marked "working", so a log is never silent longer than that while a bar is open. And the one
wording helper every printed line shares (plural)."""
import sys
import threading
import time
import weakref

from tqdm import tqdm

PLAIN_EVERY = 1.5  # seconds: no silence over ~2 s
EARLY = 0.25  # seconds before PLAIN_EVERY the heartbeat repeats a line


def interactive():
    return sys.stdout.isatty() and sys.stderr.isatty()


class PlainProgress:
    """The part of tqdm's interface the CLI uses, as plain text lines on stdout."""
    HEARTBEAT = True

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix = ""
        self.last = time.monotonic()
        self.printed_at = None  # the count last printed
        self.lock = threading.Lock()  # the heartbeat's thread prints too
        self.closed = threading.Event()
        if self.HEARTBEAT:
            threading.Thread(target=_heartbeat, args=(weakref.ref(self), self.closed), daemon=True).start()

    def set_postfix(self, **values):
        self.postfix = ", ".join("%s %s" % kv for kv in values.items())

    def update(self, n=1):
        self.n += n
        if self.printed_at is None or time.monotonic() - self.last >= PLAIN_EVERY:
            self._line()

    def _line(self, working=False):
        with self.lock:
            self.last, self.printed_at = time.monotonic(), self.n
            sys.stdout.write("%s: %d/%s %s%s%s\n" % (
                self.desc, self.n, self.total if self.total is not None else "?", self.unit,
                "; " + self.postfix if self.postfix else "", "; working" if working else ""))
            sys.stdout.flush()

    def close(self):
        self.closed.set()
        if self.n != self.printed_at:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _heartbeat(ref, closed):
    """The bar's line again while its step outlasts PLAIN_EVERY (a quarter second early: on a busy
    machine a line is read a little after it is written); ends with the bar, closed or dropped
    unclosed after an error."""
    wait = PLAIN_EVERY
    while not closed.wait(wait):
        progress = ref()
        if progress is None:
            return
        wait = progress.last + PLAIN_EVERY - EARLY - time.monotonic()
        if wait <= 0:
            progress._line(working=True)
            wait = PLAIN_EVERY - EARLY
        del progress


class _Off(PlainProgress):
    HEARTBEAT = False

    def _line(self, working=False):
        pass


def bar(total, desc, enabled=True, unit="steps"):
    """A progress bar of `total` steps: tqdm on a terminal, plain lines otherwise, nothing if not enabled."""
    if not enabled:
        return _Off(total, desc, unit)
    if interactive():
        return tqdm(total=total, desc=desc, unit=" " + unit, leave=False)
    return PlainProgress(total, desc, unit)


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")
