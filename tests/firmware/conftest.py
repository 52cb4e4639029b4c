"""Fixtures to run one firmware test script under both CPython and the real MicroPython.

    def test_something(run):
        out = run('''
            from s2l import rng
            print(rng.something())
        ''')                       # script text (dedented); returns its stdout
        assert out == "...\\n"

`run(script, heap=..., files=..., args=..., timeout=...)` forwards to
skip2lora.runtimes.mpyrun.run_firmware_script; a failing script raises skip2lora.runtimes.mpyrun.ScriptError
(MicroPythonError under MicroPython). `heap` applies only under MicroPython.
"""
import builtins
import functools
import importlib
import inspect
import sys
import types

import pytest

from skip2lora.runtimes.mpyrun import RUNTIMES, run_firmware_script


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    """"cpython" or "micropython"; tests using it run once per runtime."""
    return request.param


@pytest.fixture
def run(runtime):
    """run(script_text, **kwargs) -> stdout, under this test's runtime."""
    def run(script, **kwargs):
        return run_firmware_script(script, runtime, **kwargs)
    return run


class _Pointer:
    """A buffer as viper's ptr8/ptr16/ptr32 sees it: 8- and 16-bit loads are unsigned, 32-bit
    loads signed; a store keeps the value's low bits (so sign handling in viper code is tested)."""

    def __init__(self, buf, bits):
        self.bits = bits
        self.view = memoryview(buf).cast("B").cast({8: "B", 16: "H", 32: "I"}[bits])

    def __getitem__(self, i):
        v = self.view[i]
        return v - (1 << 32) if self.bits == 32 and v >> 31 else v

    def __setitem__(self, i, v):
        self.view[i] = v & ((1 << self.bits) - 1)


def _viper(ptr_bits):
    """The viper decorator, emulated: arguments annotated ptr8/16/32 are passed as _Pointer."""
    def viper(f):
        params = list(inspect.signature(f).parameters)
        bits = {name: ptr_bits[ann] for name, ann in f.__annotations__.items() if ann in ptr_bits}

        @functools.wraps(f)
        def call(*args):
            return f(*(_Pointer(a, bits[p]) if p in bits else a for p, a in zip(params, args)))
        return call
    return viper


@pytest.fixture
def board_flavour(monkeypatch):
    """board_flavour("s2l.kernels_native") imports a native/viper module under CPython through a
    shim: native functions run as plain Python, viper ones see their ptr8/ptr16/ptr32 arguments
    as a board does (unsigned narrow loads, truncating stores), so their arithmetic can be compared
    with the portable twin's. Not emulated: viper's int wrapping at 32 bits."""
    shim = types.ModuleType("micropython")
    ptr_bits = {}
    for bits in (8, 16, 32):
        marker = type("ptr%d" % bits, (), {})
        ptr_bits[marker] = bits
        monkeypatch.setattr(builtins, marker.__name__, marker, raising=False)
    shim.native = lambda f: f
    shim.viper = _viper(ptr_bits)
    monkeypatch.setitem(sys.modules, "micropython", shim)
    before = set(sys.modules)

    def load(name):
        monkeypatch.delitem(sys.modules, name, raising=False)
        return importlib.import_module(name)
    yield load
    for name in set(sys.modules) - before:  # imported under the shim (e.g. kernels.py picking the
        del sys.modules[name]                # shimmed flavour): not for later tests
