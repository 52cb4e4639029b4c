"""Flashing (compile + mpremote steps) and the `run` command against the emulator."""
import json

import pytest

from skip2lora import cli
from skip2lora.link import board


MODEL = "models/digits-rotate.s2lm"  # the tracked model: read, never written


def test_flash_dry_run_builds_into_a_kept_folder_and_prints_runnable_steps(capsys, tmp_path):
    import shlex
    import sys
    out = tmp_path / "flash"
    cli.main(["flash", "--port", "/dev/ttyACM7", "--arch", "xtensawin", "--dry-run", "--model", MODEL,
              "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "built the firmware for xtensawin into %s" % out
    steps = [shlex.split(line) for line in lines[1:]]
    mpremote = [sys.executable, "-m", "mpremote", "connect", "/dev/ttyACM7"]
    assert [s[:6] for s in steps] == [mpremote + ["fs"]] * 3 + [mpremote + ["exec"], mpremote + ["reset"]]
    assert steps[0][-2:] == [str(out / "lib"), ":"] and steps[1][-1] == ":main.py" and steps[2][-2:] == [MODEL, ":model.s2lm"]
    assert "os.remove('field_config.json')" in steps[3][-1]  # a field loop a previous flash set up goes
    assert (out / "lib" / "s2l" / "tuner.mpy").is_file()  # still there: the steps run as printed


def test_flash_checks_the_model_file_before_building(tmp_path, capsys):
    bad = tmp_path / "m.s2lm"
    bad.write_bytes(b"model")
    for model, reason in ((bad, "%s is not a valid model file: model file truncated" % bad),
                          (tmp_path / "gone.s2lm", "No such file or directory: '%s'" % (tmp_path / "gone.s2lm"))):
        with pytest.raises(SystemExit) as stop:
            cli.main(["flash", "--port", "/dev/ttyACM7", "--dry-run", "--model", str(model), "--out", str(tmp_path / "f")])
        assert reason in str(stop.value)
    assert not (tmp_path / "f").exists()


def test_flash_with_a_uart_installs_uart_json(capsys, monkeypatch, tmp_path):
    import subprocess
    written = {}
    real_run = subprocess.run

    def fake_run(step, *a, **kw):  # keep what the uart.json step copies; do not run mpremote
        if step[-1] == ":uart.json":
            written["uart"] = json.loads(open(step[-2]).read())
        return real_run(["true"])
    monkeypatch.setattr(subprocess, "run", fake_run)
    waited = []
    monkeypatch.setattr(board, "wait_for_port", waited.append)  # no board to come back here
    cli.main(["flash", "--port", "/dev/ttyACM7", "--uart", "tx=4,rx=5,baudrate=921600", "--model", MODEL,
              "--out", str(tmp_path)])
    assert written["uart"] == {"id": 0, "baudrate": 921600, "tx": 4, "rx": 5}
    assert waited == ["/dev/ttyACM7"]  # after the steps' reset, for the port to come back
    assert "fs cp" in capsys.readouterr().out
    for bad in ("tx=4", "tx=4,rx=five", "pin=3,tx=1,rx=2"):
        with pytest.raises(SystemExit, match="error: --uart"):
            cli.main(["flash", "--port", "/dev/ttyACM7", "--uart", bad, "--dry-run", "--out", str(tmp_path)])


def test_flash_field_installs_the_field_config_and_sensor(capsys, monkeypatch, tmp_path):
    import subprocess
    copied = {}
    real_run = subprocess.run

    def fake_run(step, *a, **kw):  # keep what each fs cp step copies; do not run mpremote
        if step[-3:-2] == ["cp"]:
            copied[step[-1]] = step[-2]
        return real_run(["true"])
    monkeypatch.setattr(subprocess, "run", fake_run)
    waited = []
    monkeypatch.setattr(board, "wait_for_port", waited.append)  # no board to come back here
    sensor = tmp_path / "vibration.py"
    sensor.write_text("def read():\n    return None\n")
    cli.main(["flash", "--port", "/dev/ttyACM7", "--field", "--sensor", str(sensor), "--label-pins", "14,15",
              "--model", MODEL, "--out", str(tmp_path / "out")])
    assert json.loads(open(copied[":field_config.json"]).read()) == {"sensor": "vibration", "label_pins": [14, 15]}
    assert copied[":vibration.py"] == str(sensor)
    cli.main(["flash", "--port", "/dev/ttyACM7", "--field", "--model", MODEL, "--out", str(tmp_path / "out")])
    assert json.loads(open(copied[":field_config.json"]).read()) == {"sensor": "adc_sensor"}  # compiled in lib
    cli.main(["flash", "--port", "/dev/ttyACM7", "--field", "--label-uart", "tx=4,rx=5,id=1,baudrate=9600",
              "--model", MODEL, "--out", str(tmp_path / "out")])
    assert json.loads(open(copied[":field_config.json"]).read()) == {
        "sensor": "adc_sensor", "label_uart": {"id": 1, "baudrate": 9600, "tx": 4, "rx": 5}}
    for bad, reason in ((["--label-pins", "14"], "add --field"), (["--field", "--label-pins", "14,a"], "--label-pins"),
                        (["--label-uart", "tx=4,rx=5"], "add --field"), (["--field", "--label-uart", "tx=4"], "--label-uart needs"),
                        (["--field", "--label-uart", "tx=4,rx=5", "--label-pins", "2,3"], "one of them"),
                        (["--field", "--sensor", str(tmp_path / "none.py")], "is not a Python file")):
        with pytest.raises(SystemExit, match=reason):
            cli.main(["flash", "--port", "/dev/ttyACM7", "--dry-run", "--out", str(tmp_path / "f")] + bad)


def test_run_streams_trains_and_reports_the_link(tmp_path, capsys):
    from skip2lora.link.emulator import Emulator
    out = tmp_path / "run.json"
    with Emulator("cpython") as emu:
        cli.main(["run", "--port", emu.port, "--epochs", "2", "--quiet", "--json", str(out),
                  "--model", str(tmp_path / "model.s2lm")])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (tmp_path / "model.s2lm").exists()  # exported first, since it was missing
    assert result["epochs"] == 2 and len(result["losses"]) == 2
    assert result["config"]["rank"] == 4  # no --rank, a file with no starting adapter: the tuner's own
    assert result["accuracy"] > result["accuracy_before"]
    assert result["link"]["payload_share"] >= 0.90
    assert "samples/s at 115200 baud" in printed and "%.1f%% payload" % (100 * result["link"]["payload_share"]) in printed


def test_run_on_the_integer_path_with_a_sample_limit_reports_the_boards_speed(tmp_path, capsys):
    # the command that checks the board goals: 200 samples x 10 epochs, integer path (smaller here)
    from skip2lora.link.emulator import Emulator
    out = tmp_path / "run.json"
    with Emulator("cpython") as emu:
        cli.main(["run", "--port", emu.port, "--path", "int", "--limit", "40", "--epochs", "3", "--quiet",
                  "--json", str(out), "--model", str(tmp_path / "model.s2lm")])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["path"] == "int" and result["link"]["finetune_samples"] == 40
    # epochs 2 and 3 hit the cache for every training sample, and the guard's scoring after each
    # epoch for every validation sample (its first scoring, before epoch 1, fills their rows)
    assert result["cache_hits"] == 80 + result["guard"]["val_samples"]
    speed = result["speed"]
    assert len(result["epoch_ms"]) == 3 and speed["finetune_seconds"] == sum(result["epoch_ms"]) / 1000
    assert speed["frozen_forward_ms"] > 0 and speed["cached_step_ms"] > 0
    assert "speed on the board (int path): frozen forward %.1f ms a sample; a cached epoch per sample (training " \
           "and validation) %.2f ms; " \
           "40 samples x 3 epochs" % (speed["frozen_forward_ms"], speed["cached_step_ms"]) in printed


def test_run_options_are_checked(capsys):
    import pytest
    for bad in (["--limit", "0"], ["--limit", "x"], ["--path", "fixed"]):
        with pytest.raises(SystemExit):
            cli.main(["run", "--port", "loop://"] + bad)
        assert "error: argument" in capsys.readouterr().err


def test_run_against_a_silent_port_is_a_clear_error(tmp_path):
    import pytest
    with pytest.raises(SystemExit, match="error: no port /dev/no-such-board: is the board plugged in"):
        cli.main(["run", "--port", "/dev/no-such-board", "--quiet", "--model", str(tmp_path / "m.s2lm")])


def test_bench_over_serial_matches_the_reference(tmp_path, capsys):
    from skip2lora.link.emulator import Emulator
    out, ref = tmp_path / "serial.json", tmp_path / "numpy.json"
    args = ["--epochs", "2", "--quiet", "--methods", "lora-all,skip2-lora"]
    with Emulator("cpython") as emu:
        cli.main(["bench", "--runtime", "serial", "--port", emu.port, "--json", str(out)] + args)
    printed = capsys.readouterr().out
    cli.main(["bench", "--runtime", "numpy", "--json", str(ref)] + args)
    serial, numpy = json.loads(out.read_text()), json.loads(ref.read_text())
    assert serial["runtime"] == "serial" and serial["skip2_over_lora_all_time"] > 0
    for got, want in zip(serial["results"], numpy["results"]):
        # the reference's float32 sums follow the machine's BLAS: allow one test sample either way
        assert got["method"] == want["method"] and abs(got["accuracy"] - want["accuracy"]) <= 1 / 250 + 1e-9
        assert got["macs"]["backward"] == want["macs"]["backward"]
    assert "fine-tune time Skip2-LoRA / LoRA-All" in printed
    # the emulator's heap is the host's interpreter's, not a board's: no figure for it
    heap_rows = [line.split() for line in printed.splitlines() if line.startswith(("lora-all ", "skip2-lora "))][-2:]
    assert [row[-3] for row in heap_rows] == ["n/a", "n/a"]


def test_run_at_a_diverging_rate_is_caught_by_the_boards_guard_and_the_json_says_how(tmp_path, capsys):
    # lr 0.5 blows up from the first epoch: the board restores its best adapters at half the rate
    # until one trains; every epoch's validation score, rate and restore are in the results JSON
    from skip2lora.link.emulator import Emulator
    out = tmp_path / "run.json"
    with Emulator("cpython") as emu:
        cli.main(["run", "--port", emu.port, "--path", "int", "--limit", "100", "--epochs", "5", "--lr", "0.5",
                  "--quiet", "--json", str(out), "--model", MODEL])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    log, guard = result["epoch_log"], result["guard"]
    assert [e["epoch"] for e in log] == [1, 2, 3, 4, 5] and log[0]["restored"] and log[0]["loss"] is not None
    restored = [e for e in log if e["restored"]]
    assert [e["lr"] for e in restored] == [0.5 / 2 ** k for k in range(len(restored))]
    assert guard["restores"] == len(restored) and guard["trained"] and guard["val"] > guard["val_start"]
    assert result["accuracy"] > result["accuracy_before"]
    assert "guard: %d validation samples" % guard["val_samples"] in printed
    assert "%d restore" % len(restored) in printed


def test_waiting_for_a_reset_board_ends_when_its_port_is_back_or_says_why(tmp_path):
    import threading
    port = tmp_path / "ttyACM9"
    threading.Timer(0.3, port.touch).start()  # the USB port re-enumerates
    board.wait_for_port(str(port), wait_s=5, gone_s=0)
    with pytest.raises(RuntimeError, match="did not come back within 0 s of the reset"):
        board.wait_for_port(str(tmp_path / "gone"), wait_s=0, gone_s=0)
