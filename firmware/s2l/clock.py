# Microsecond ticks and heap use on a board, with CPython stand-ins so the same code runs on the host.
import gc
import time

try:
    ticks_us = time.ticks_us
    ticks_ms = time.ticks_ms  # for spans past ticks_us's (half its period: 9 minutes on a board)
    ticks_diff = time.ticks_diff
    sleep_ms = time.sleep_ms
except AttributeError:  # CPython
    def sleep_ms(ms):
        time.sleep(ms / 1000)

    def ticks_us():
        return time.perf_counter_ns() // 1000

    def ticks_ms():
        return time.perf_counter_ns() // 1000000

    def ticks_diff(a, b):
        return a - b


def mem_alloc():
    try:
        return gc.mem_alloc()
    except AttributeError:  # CPython has no GC heap to report
        return 0


def mem_free():
    """Free heap after a collection; None on CPython, which has no GC heap to report."""
    try:
        gc.collect()
        return gc.mem_free()
    except AttributeError:
        return None
