"""The whole `run` flow on a board's heap: the emulator runs the board's main.py under the MicroPython
unix port (viper kernels for real, the firmware compiled by mpy-cross as a board holds it) with an
RP2040's free heap at boot, and with an ESP32's."""
import json
from pathlib import Path

import pytest

from skip2lora import cli
from skip2lora.emulator import Emulator
from skip2lora.mpyrun import BOARD_HEAP, ESP32_HEAP
from skip2lora.pipeline import FAN_DATA

MODEL = "models/digits-rotate.s2lm"  # the tracked model: read, never written


def run(port, tmp_path, *args, model=MODEL):
    out = tmp_path / "run.json"
    cli.main(["run", "--port", port, "--model", str(model), "--quiet", "--json", str(out)] + list(args))
    return json.loads(out.read_text())


def test_the_readme_board_command_completes_on_an_rp2040_heap(tmp_path):
    command = ("--path", "int", "--limit", "200", "--epochs", "10", "--holdout", "0")
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        board = run(emu.port, tmp_path, *command)
    with Emulator("cpython") as emu:
        host = run(emu.port, tmp_path, *command)
    assert board["kernels"] == "viper" and host["kernels"] == "portable"
    assert board["epochs"] == 10 and board["link"]["finetune_samples"] == 200
    assert board["plan"]["ram_rows"] == 200 and board["plan"]["spilled_rows"] == 0
    # the viper kernels give the portable twin's integers: the same accuracies, before and after
    assert (board["accuracy_before"], board["accuracy"]) == (host["accuracy_before"], host["accuracy"])
    assert board["accuracy"] - board["accuracy_before"] >= 0.10
    assert board["test_samples"] == 250
    # room left: what HELLO saw free minus what the samples took stays well above the plan's reserve
    assert board["board"]["free_heap"] > 150 * 1024 and board["free_heap_after"] > 60 * 1024


@pytest.mark.skipif(not Path(FAN_DATA).is_dir(), reason="the cooling-fan dataset is not at ../shared/data")
def test_fan_env_streams_as_many_samples_as_the_boards_plan_holds(tmp_path):
    # 705 fine-tune samples of 128 features are more than an RP2040's RAM: the plan puts the rest
    # of the rows (sample and skip-cache entry) on flash, and run streams them all
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        result = run(emu.port, tmp_path, "--scenario", "fan-env", "--path", "int", "--epochs", "3",
                     model=tmp_path / "fan-env.s2lm")
    plan = result["plan"]
    assert plan["samples"] == result["link"]["finetune_samples"] == 705
    assert plan["spilled_rows"] > 0 and plan["ram_rows"] + plan["spilled_rows"] == 705
    assert result["cache_spilled_bytes"] > 0 and result["epochs"] == 3
    assert result["accuracy"] - result["accuracy_before"] >= 0.20


def test_an_esp32_heap_completes_or_is_refused_before_streaming(tmp_path, capsys):
    # 110 KB, an ESP32 without PSRAM, holds less on the unix port (64-bit objects) than on the
    # board itself: either the run completes (rows on flash) or the upload or CONFIG refuses it
    # with the reason, before a sample is sent. (Measured here: after the imports the largest free
    # block is 6.4 KB of 58 KB free, and the 10 KB model does not fit in one block.)
    with Emulator("micropython-unix", heap=ESP32_HEAP) as emu:
        try:
            result = run(emu.port, tmp_path, "--path", "int", "--limit", "200", "--epochs", "3")
        except SystemExit as stop:
            message = str(stop)
            assert any(m in message for m in ("do not fit", "no memory for the tuner", "no memory for the model")), message
            assert "send fine-tune samples" not in capsys.readouterr().out
            return
    assert result["plan"]["samples"] == 200 and result["epochs"] == 3
