"""The test harness itself: scripts really run under MicroPython (WebAssembly build) and CPython."""
import time

import pytest

import s2l
from skip2lora.runtimes import mpyrun
from skip2lora.runtimes.mpyrun import MicroPythonError, MicroPythonUnavailable, ScriptError, run_micropython


def test_runs_on_the_requested_runtime_with_firmware_importable(run, runtime):
    out = run("""
        import sys
        import s2l
        from s2l import modelfile  # a submodule: the package tree is copied whole
        print(sys.implementation.name)
        print(s2l.VERSION)
        print(modelfile.MAGIC)
    """)
    assert out.splitlines() == [runtime.split("-")[0], s2l.VERSION, "b'S2LM'"]


def test_micropython_imports_s2l_from_lib():
    out = run_micropython("import s2l; print(s2l.__file__)")
    assert out == "/lib/s2l/__init__.py\n"


def test_stdout_is_returned_and_stderr_kept_apart(run):
    out = run("""
        import sys
        print("to out")
        sys.stderr.write("to err\\n")
    """)
    assert out == "to out\n"


def test_exception_surfaces_as_error_with_traceback(run, runtime):
    with pytest.raises(ScriptError) as info:
        run("""
            print("before")
            def f():
                raise ValueError("boom-1234")
            f()
        """)
    err = info.value
    assert err.returncode == 1
    assert err.stdout == "before\n"
    assert "ValueError" in str(err) and "boom-1234" in str(err)
    assert "ValueError: boom-1234" in err.stderr


def test_micropython_exception_is_micropython_error():
    with pytest.raises(MicroPythonError, match="ZeroDivisionError"):
        run_micropython("1 / 0")


def test_syntax_error_surfaces():
    with pytest.raises(MicroPythonError, match="SyntaxError"):
        run_micropython("def f(:\n")


def test_sys_exit_code(run):
    assert run("import sys; print('x'); sys.exit(0)") == "x\n"
    with pytest.raises(ScriptError) as info:
        run("import sys; sys.exit(3)")
    assert info.value.returncode == 3


def test_argv(run):
    out = run("import sys; print(sys.argv[1:])", args=["a", "b c"])
    assert out == "['a', 'b c']\n"


def test_heap_limit_is_honoured():
    script = "b = bytearray(%d); print('ok')"
    assert run_micropython(script % 20_000, heap="64k") == "ok\n"
    with pytest.raises(MicroPythonError, match="MemoryError"):
        run_micropython(script % 200_000, heap=64 * 1024)
    # Without a limit, the heap grows on demand.
    assert run_micropython(script % 200_000) == "ok\n"


def test_heap_limit_counts_garbage_too():
    # A property of the WebAssembly build, pinned here because it shapes memory tests: garbage is
    # only collected once control returns to JS, never during the run, so a heap limit bounds all
    # that the script allocates. On a board, gc would reclaim these buffers and this would succeed.
    script = """
        for i in range(400):
            b = bytearray(1000)
        print("ok")
    """
    with pytest.raises(MicroPythonError, match="MemoryError"):
        run_micropython(script, heap="256k")
    assert run_micropython(script, heap="1m") == "ok\n"


def test_files_are_readable(run, tmp_path):
    host_file = tmp_path / "host.bin"
    host_file.write_bytes(b"\x00\x01from host\xff")
    out = run("""
        with open("model.bin", "rb") as f:
            print(f.read())
        with open("data/host.bin", "rb") as f:
            print(f.read())
    """, files={"model.bin": b"S2LM\x01\x02", "data/host.bin": host_file})
    assert out.splitlines() == ["b'S2LM\\x01\\x02'", "b'\\x00\\x01from host\\xff'"]


def test_micropython_files_at_absolute_paths(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"abc")
    out = run_micropython("print(open('/models/m.bin', 'rb').read())",
                          files={"/models/m.bin": tmp_path / "m.bin"})
    assert out == "b'abc'\n"


def test_floats_are_double_precision_under_wasm():
    # Boards use single-precision floats; the WebAssembly build uses doubles (like CPython).
    assert run_micropython("print(repr(0.1 + 0.2))") == "0.30000000000000004\n"


def test_no_native_emitter_under_wasm():
    with pytest.raises(MicroPythonError, match="SyntaxError"):
        run_micropython("""
            import micropython
            @micropython.viper
            def f(x: int) -> int:
                return x
        """)


def test_missing_node_gives_clear_error(monkeypatch):
    monkeypatch.setattr(mpyrun.shutil, "which", lambda name: None)
    with pytest.raises(MicroPythonUnavailable, match="make install"):
        run_micropython("print(1)")


def test_missing_package_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(mpyrun, "MP_PACKAGE", tmp_path / "nope" / "micropython.mjs")
    with pytest.raises(MicroPythonUnavailable, match="make install"):
        run_micropython("print(1)")


def test_timeout():
    with pytest.raises(MicroPythonError, match="timed out"):
        run_micropython("while True: pass", timeout=1)


def test_unknown_runtime():
    with pytest.raises(ValueError):
        mpyrun.run_firmware_script("print(1)", "pypy")


def test_startup_cost_is_small():
    # Every run_micropython call starts node and the wasm interpreter afresh (~0.15 s measured).
    start = time.perf_counter()
    run_micropython("pass")
    assert time.perf_counter() - start < 5
