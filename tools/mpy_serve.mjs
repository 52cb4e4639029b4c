// A board behind pipes, for the emulator: the firmware's protocol core under the real MicroPython
// (the official WebAssembly build), one call into it per message so garbage is collected between.
//   node tools/mpy_serve.mjs FIRMWARE_DIR [WORKING_EVERY_US]
// stdin:  messages "F" u32 n <n bytes> (feed) or "W" u32 0 (work: one unit of pending training)
// stdout: u8 busy | u32 n | <n reply bytes>, one per message, after any number of u8 2 | u32 n |
// <n bytes> that the board sends during the work (WORKING frames, as they happen). Files live in
// MEMFS (lost at exit).
import fs from "node:fs";
import { copyTree, importMicroPython } from "./mpy_memfs.mjs";

function readExactly(n) {
  const buf = Buffer.alloc(n);
  for (let got = 0; got < n;) {
    let k;
    try { k = fs.readSync(0, buf, got, n - got, null); } catch (e) { if (e.code === "EAGAIN") continue; throw e; }
    if (k === 0) return null;
    got += k;
  }
  return buf;
}

const { loadMicroPython } = await importMicroPython();
const mp = await loadMicroPython({ heapsize: 1024 * 1024, linebuffer: false,
  stdout: (b) => fs.writeSync(2, b), stderr: (b) => fs.writeSync(2, b) });
copyTree(mp.FS, process.argv[2], "/lib");
mp.FS.mkdirTree("/flash");
function send(first, out) {
  const head = Buffer.alloc(5);
  head[0] = first;
  head.writeUInt32LE(out.length, 1);
  fs.writeSync(1, Buffer.concat([head, out]));
}
globalThis.s2lInterim = (hex) => send(2, Buffer.from(String(hex), "hex"));
mp.runPython(`
import sys
import js
sys.path.append("/lib")
from s2l.protocol import Core
core = Core("/flash")
${process.argv[3] ? `core.working_every_us = ${parseInt(process.argv[3], 10)}` : ""}
def _emit(data):
    js.s2lInterim(data.hex())
`);
for (;;) {
  const head = readExactly(5);
  if (head === null) break;
  const n = head.readUInt32LE(1), data = n ? readExactly(n) : Buffer.alloc(0);
  const call = head[0] === 0x46 ? `core.feed(bytes.fromhex("${data.toString("hex")}"))` : "core.work(_emit)";
  // an empty reply is "" (in this build b"".hex() is not a str); a Python error is logged and
  // answered with no bytes, as a board would stay silent: the pipe protocol must never stop
  let out = Buffer.alloc(0);
  try {
    mp.runPython(`_r = ${call}\n_out = _r.hex() if _r else ""\n_busy = 1 if core.busy else 0`);
    out = Buffer.from(String(mp.globals.get("_out")), "hex");
  } catch (e) {
    fs.writeSync(2, `mpy_serve: ${e}\n`);
  }
  send(mp.globals.get("_busy"), out);
}
