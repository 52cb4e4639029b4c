"""Fixtures to run one firmware test script under both CPython and the real MicroPython.

    def test_something(run):
        out = run('''
            from s2l import rng
            print(rng.something())
        ''')                       # script text (dedented); returns its stdout
        assert out == "...\\n"

`run(script, heap=..., files=..., args=..., timeout=...)` forwards to
skip2lora.mpyrun.run_firmware_script; a failing script raises skip2lora.mpyrun.ScriptError
(MicroPythonError under MicroPython). `heap` applies only under MicroPython.
"""
import builtins
import importlib
import sys
import types

import pytest

from skip2lora.mpyrun import RUNTIMES, run_firmware_script


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


@pytest.fixture
def board_flavour(monkeypatch):
    """board_flavour("s2l.kernels_native") imports a native/viper module under CPython through a
    shim that makes the decorators plain Python, so its arithmetic can be compared with the
    portable twin's (viper's unsigned ptr8/ptr16 loads are not emulated: arrays give signed)."""
    shim = types.ModuleType("micropython")
    shim.native = shim.viper = lambda f: f
    monkeypatch.setitem(sys.modules, "micropython", shim)
    for name in ("ptr8", "ptr16", "ptr32"):
        monkeypatch.setattr(builtins, name, object, raising=False)

    def load(name):
        monkeypatch.delitem(sys.modules, name, raising=False)
        return importlib.import_module(name)
    return load
