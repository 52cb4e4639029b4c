// Shared by the MicroPython runners: where the WebAssembly build lives, and copying host files in.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const MP_JS = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "node_modules",
  "@micropython", "micropython-webassembly-pyscript", "micropython.mjs");

export async function importMicroPython() {
  return import(pathToFileURL(MP_JS).href);
}

// Copy a host directory tree into MEMFS (CPython's __pycache__ is of no use to MicroPython).
export function copyTree(FS, hostDir, memDir) {
  FS.mkdirTree(memDir);
  for (const e of fs.readdirSync(hostDir, { withFileTypes: true })) {
    if (e.name === "__pycache__") continue;
    const h = path.join(hostDir, e.name), m = `${memDir}/${e.name}`;
    if (e.isDirectory()) copyTree(FS, h, m);
    else if (e.isFile()) FS.writeFile(m, fs.readFileSync(h));
  }
}
