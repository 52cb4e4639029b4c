"""One host drives many boards at once (`skip2lora fleet`, cli.cmd_fleet). Each board, in a
thread of its own around the same Client and run_job as `run`: HELLO, the CoA-front configuration
its arena allows (the budget rule of `export --port`), that model file (exported once per
configuration, then reused: coa/models.py), upload, stream its data, fine-tune, score. Then one JSON and one
report (`skip2lora report` merges the JSONs of several hosts). A board that fails is reported and
the others go on; Ctrl-C RESETs every busy board, each from its own thread, before the command
stops."""
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

from tqdm import tqdm

from ..progress import PLAIN_EVERY, interactive
from .board import run_job
from .client import BoardError, Client, LinkError, Stopped

# the exit status is the number of boards that did not complete, capped below the shell's own
# statuses (126 and up; 130 is Ctrl-C)
MAX_STATUS = 100
DATA_FILES = ("finetune", "test")  # a board's folder under --data-per-board: <name>.csv or <name>.npz


def board_name(port):
    """A board's name in the display, the report and --data-per-board: its port, without /dev/."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", port[len("/dev/"):] if port.startswith("/dev/") else port).strip("-")


def read_ports(ports, ports_from):
    """The ports of --port and of --ports-from FILE (one a line, # comments), each once."""
    ports = list(ports or [])
    if ports_from:
        with open(ports_from) as f:  # a missing file: the error names it
            ports += [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
    if not ports:
        raise ValueError("no boards: give --port P (repeated) or --ports-from FILE")
    names = [board_name(p) for p in ports]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError("port(s) named twice: %s" % ", ".join(twice))
    return ports


def board_data(scenario, folder, name):
    """The scenario with the fine-tune and test sets of folder/name/ (finetune.csv|npz, test.csv|npz)."""
    from ..data.loaders import load_features
    parts = []
    for part in DATA_FILES:
        found = [os.path.join(folder, name, part + ext) for ext in (".csv", ".npz")
                 if os.path.exists(os.path.join(folder, name, part + ext))]
        if not found:
            raise ValueError("--data-per-board %s: no %s.csv or %s.npz in %s/ for the board on port %s" % (
                folder, part, part, os.path.join(folder, name), name))
        X, y, _ = load_features(found[0], scenario.classes)
        if X.shape[1] != scenario.n_features:
            raise ValueError("%s: %d features; the model takes %d" % (found[0], X.shape[1], scenario.n_features))
        parts.append((X, y))
    return replace(scenario, name="%s/%s" % (scenario.name, name), finetune=parts[0], test=parts[1])


class Display:
    """Progress of every board in one display: a bar per board on a terminal, else a line per board
    event (a phase's progress at most every PLAIN_EVERY s, and its end). Boards report from their
    threads: one lock orders the output."""

    def __init__(self, names, enabled=True):
        self.enabled = enabled
        self.width = max(map(len, names))
        self.lock = threading.Lock()
        self.bars = None
        if enabled and interactive():
            self.bars = {n: tqdm(total=1, desc=n, position=k, leave=True, unit=" steps")
                         for k, n in enumerate(names)}
        self.kinds = {}  # name -> the phase its bar shows
        self.last = {}  # name -> (kind, when) of its last progress line

    def event(self, name, text):
        if not self.enabled:
            return
        line = "%-*s  %s" % (self.width, name, text)
        with self.lock:
            if self.bars:
                tqdm.write(line)
            else:
                print(line, flush=True)

    def progress(self, name, kind, done, total):
        if not self.enabled:
            return
        if self.bars:
            with self.lock:
                bar = self.bars[name]
                if self.kinds.get(name) != kind:
                    self.kinds[name] = kind
                    bar.reset(total=total)
                    bar.set_description("%s %s" % (name, kind))
                bar.update(done - bar.n)
            return
        now = time.monotonic()
        with self.lock:
            kind_then, then = self.last.get(name, (None, 0.0))
            if kind_then == kind and done < total and now - then < PLAIN_EVERY:
                return
            self.last[name] = (kind, now)
        self.event(name, "%s %d/%d" % (kind, done, total))

    def close(self):
        for bar in (self.bars or {}).values():
            bar.close()


@dataclass
class Plan:
    """What the boards of the fleet are given."""
    scenarios: dict  # board name -> the Scenario whose fine-tune and test sets it gets
    models: object  # a board's configuration and its model file, by its HELLO (coa.models.Models)
    config: dict  # CONFIG fields, as `run` sends them
    limit: int = None
    retries: int = 3


def _choose(port, name, plan, display):
    """HELLO, the budget, the front entry that fits it and its model file: (hello, budget, entry, path, bytes)."""
    with Client(port, retries=plan.retries) as client:
        hello = client.hello()
    budget, entry = plan.models.choose(hello, port)
    display.event(name, "%d-byte arena -> %d-byte budget: %s (%d bytes)" % (
        hello["arena"]["size"], budget, entry["label"], entry["file_bytes"]))
    path, data, how = plan.models.get(entry)
    display.event(name, "model %s (%s)" % (path, how))
    return hello, budget, entry, path, data


def drive(port, plan, display, stop):
    """One board from HELLO to its scores; a row of the fleet JSON whatever happens (status ok,
    failed with the error, or stopped by Ctrl-C)."""
    name = board_name(port)
    row = {"name": name, "port": port, "status": "failed", "error": None}
    t0 = time.monotonic()

    def progress(kind, done, total, info):
        if stop.is_set():  # the Client RESETs the board on KeyboardInterrupt, as after Ctrl-C in `run`
            raise KeyboardInterrupt
        display.progress(name, kind, done, total)
    try:
        row["hello"], row["budget"], entry, path, data = _choose(port, name, plan, display)
        row["configuration"] = {k: entry[k] for k in ("label", "config", "average_bits", "file_bytes")}
        row["model"] = {"path": path, "bytes": len(data)}
        if stop.is_set():
            raise Stopped("stopped before its job; the board is idle")
        row["run"] = run_job(port, data, plan.scenarios[name], plan.config, progress=progress, limit=plan.limit,
                             retries=plan.retries)
        row["status"] = "ok"
        display.event(name, "done: accuracy %.1f%% -> %.1f%%" % (100 * row["run"]["accuracy_before"],
                                                                  100 * row["run"]["accuracy"]))
    except Stopped as e:
        row["status"], row["error"] = "stopped", str(e)
        display.event(name, str(e))
    except (ValueError, OSError, LinkError, BoardError) as e:  # this board only: the others go on
        row["error"] = str(e)
        display.event(name, "FAILED: %s" % e)
    row["seconds"] = time.monotonic() - t0
    return row


def run_fleet(ports, plan, display):
    """Every board in its own thread; the rows in the order of `ports`. Ctrl-C: each thread RESETs
    its busy board at its next frame or epoch and returns its row as stopped."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        futures = [pool.submit(drive, port, plan, display, stop) for port in ports]
        try:
            wait(futures)
        except KeyboardInterrupt:
            stop.set()
            display.event("fleet", "Ctrl-C: each busy board is RESET by its thread ...")
            wait(futures)
    return [f.result() for f in futures]


def fleet_record(rows, plan, wall_seconds, args):
    return {"fleet": {"host": socket.gethostname(), "scenario": args.scenario, "coa": args.coa,
                      "data_per_board": args.data_per_board, "config": plan.config, "limit": plan.limit,
                      "boards": len(rows), "completed": sum(r["status"] == "ok" for r in rows),
                      "wall_seconds": wall_seconds},
            "boards": rows}
