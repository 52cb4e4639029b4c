// Run a script under the real MicroPython (the official WebAssembly build, from node_modules):
//   node tools/mpy_run.mjs [--heap BYTES] [--lib DIR]... [--file HOST:/MEMFS/PATH]... SCRIPT.py|- [args...]
// --heap N[k|m]: GC heap size and a hard limit (MemoryError beyond it). Without --heap: 1 MiB that
//   grows on demand, as this build does by default. NB this build never collects garbage *during* a
//   run (only once control is back in JS), so a limit bounds all that the run allocates, garbage too.
// --lib DIR: copy DIR's tree into /lib (on sys.path): --lib firmware gives /lib/s2l/*.py.
// --file HOST:/PATH: copy a host file into the in-memory filesystem (e.g. a model file).
// --steps: after the script, drive the generator it left in global `steps`, one next() per call
//   into MicroPython, so that garbage is collected between steps (never during a call, see above).
// SCRIPT "-" reads the script from stdin. Exit code: 0, sys.exit's code, or 1 on an uncaught
// exception, whose traceback goes to stderr.
import fs from "node:fs";
import path from "node:path";
import { copyTree, importMicroPython } from "./mpy_memfs.mjs";
const RESERVE = 16 * 1024; // wasm malloc space kept for the JS<->C glue when the heap is capped

// Python glue, compiled as "<mpy_run>" so that its frame stands apart in tracebacks: runs the script
// as __main__ with sys.argv set, and turns its outcome into an exit code.
const GLUE = `
import sys
if "/lib" not in sys.path: sys.path.append("/lib")
_g = {}
def _outcome(f):
    try:
        f()
    except StopIteration:
        return 0
    except SystemExit as e:
        c = e.args[0] if e.args else None
        if c is None or isinstance(c, (int, bool)): return int(c or 0)
        print(c, file=sys.stderr)
        return 1
    except BaseException as e:
        sys.print_exception(e, sys.stderr)
        return 1
    return -1
def _run(path, name, args):
    sys.argv.clear(); sys.argv.append(name); sys.argv.extend(args)
    _g.update({"__name__": "__main__", "__file__": name})
    def run():
        with open(path) as f: code = compile(f.read(), name, "exec")
        exec(code, _g)
    rc = _outcome(run)
    return 0 if rc == -1 else rc
def _step():
    return _outcome(lambda: next(_g["steps"]))
`;

function parseArgs(argv) {
  const o = { heap: null, libs: [], files: [], script: null, args: [], steps: false };
  const size = (s) => {
    const m = /^(\d+)([km]?)$/i.exec(s ?? "");
    if (!m) throw new Error(`bad size: ${s}`);
    return Number(m[1]) * { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  };
  let i = 0;
  for (; i < argv.length && o.script === null; i++) {
    if (argv[i] === "--heap") o.heap = size(argv[++i]);
    else if (argv[i] === "--steps") o.steps = true;
    else if (argv[i] === "--lib") o.libs.push(argv[++i]);
    else if (argv[i] === "--file") {
      const spec = argv[++i] ?? "", k = spec.lastIndexOf(":");
      if (k < 1 || spec[k + 1] !== "/") throw new Error(`--file wants HOST:/ABS/PATH, got "${spec}"`);
      o.files.push([spec.slice(0, k), spec.slice(k + 1)]);
    } else o.script = argv[i];
  }
  if (o.script === null) throw new Error("usage: mpy_run.mjs [--heap N] [--steps] [--lib DIR]... [--file H:/P]... SCRIPT|- [args]");
  if (o.heap !== null && o.heap < 2 * RESERVE) throw new Error(`--heap must be at least ${2 * RESERVE}`);
  o.args = argv.slice(i);
  return o;
}

// The build adds heap areas on demand, malloc'd from wasm memory (which grows up to 2 GiB). To cap
// the heap: forbid memory growth, then malloc away all free wasm memory but a small reserve, so no
// new heap area fits and MicroPython raises MemoryError instead.
const growth = { allowed: true };
const instantiate = WebAssembly.instantiate;
WebAssembly.instantiate = (bin, imports) => {
  const resize = imports.env.emscripten_resize_heap;
  imports.env.emscripten_resize_heap = (n) => (growth.allowed ? resize(n) : 0);
  return instantiate(bin, imports);
};
function capHeap(M) {
  const reserve = M._malloc(RESERVE);
  growth.allowed = false;
  for (let size = 1 << 30; size >= 8;) if (!M._malloc(size)) size >>= 1; // held for good
  M._free(reserve);
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const source = fs.readFileSync(o.script === "-" ? 0 : o.script);
  // All of Python's I/O goes through these hooks, synchronously and unbuffered (called per byte).
  // Streaming stdin plugs in here too: loadMicroPython's `stdin` option takes a () => byte|null
  // callback (e.g. over a blocking fs.readSync(0, ...)); the script then must not come from stdin.
  const io = { stdout: (b) => fs.writeSync(1, b), stderr: (b) => fs.writeSync(2, b) };
  const { loadMicroPython } = await importMicroPython();
  const mp = await loadMicroPython({ heapsize: o.heap ?? 1024 * 1024, linebuffer: false, ...io });
  if (o.heap !== null) capHeap(mp._module);
  for (const lib of o.libs) copyTree(mp.FS, lib, "/lib");
  for (const [host, mem] of o.files) {
    mp.FS.mkdirTree(path.posix.dirname(mem));
    mp.FS.writeFile(mem, fs.readFileSync(host));
  }
  // The script goes over in MEMFS rather than as a JS string, so it is compiled in the Python heap.
  const name = o.script === "-" ? "<stdin>" : o.script, memScript = "/tmp/__main__.py";
  mp.FS.writeFile(memScript, source);
  const lit = JSON.stringify; // JSON strings and arrays are valid Python literals
  mp.runPython(`exec(compile(${lit(GLUE)}, "<mpy_run>", "exec"))`);
  mp.runPython(`_rc = _run(${lit(memScript)}, ${lit(name)}, ${lit(o.args)})`);
  let rc = mp.globals.get("_rc");
  while (o.steps && rc === 0) {
    mp.runPython("_rc = _step()");
    rc = mp.globals.get("_rc");
    if (rc === -1) rc = 0;
    else break;
  }
  return rc;
}

main().then((rc) => process.exit(rc), (e) => {
  // Report errors by message: an uncaught error would make node print the whole minified module.
  process.stderr.write(e.name === "PythonError" ? e.message : `mpy_run: ${e.message ?? e}\n`);
  process.exit(1);
});
