"""End to end over a real pseudo-terminal and pyserial: the client against the emulator, under the
real MicroPython and under CPython."""
import struct

import numpy as np
import pytest

from s2l import frames as F
from skip2lora.link.client import BoardError, Client, LinkError, dequantize_like_the_board
from skip2lora.link.emulator import Emulator
from skip2lora.train import reference

from ...firmware.test_tuner import CONFIG, fixed_problem


@pytest.fixture(scope="module", params=["cpython", "micropython"])
def emulator(request):
    with Emulator(request.param) as emu:
        yield emu


@pytest.fixture(scope="module")
def problem():
    return fixed_problem()


def test_the_board_reports_the_references_accuracy(emulator, problem):
    model, net, (X, y), (Xt, yt) = problem
    progress = []
    with Client(emulator.port, timeout=10) as board:
        assert board.hello()["protocol"] == F.PROTOCOL_VERSION
        assert board.upload_model(model)["dims"] == [12, 8, 6, 4]
        board.configure(method="skip2-lora", holdout=0, path="float", cache_mode="float", **CONFIG)  # unguarded, as the reference runs
        board.send_samples(X, y, F.KIND_FINETUNE)  # int8: the reference gets what the board decoded
        done = board.train(on_progress=progress.append)
        board.send_samples(Xt, yt, F.KIND_TEST, F.ENC_FLOAT32)  # scored as they arrive, after training
        result = board.evaluate()
        stats = board.stats()
    Xq = dequantize_like_the_board(X, F.ENC_INT8)
    want, _ = reference.run(net, reference.Config("skip2-lora", **CONFIG), (Xq, y), (Xt, yt))
    assert result["accuracy"] == want["accuracy"]
    assert [p["epoch"] for p in progress] == [1, 2, 3] and done["epochs"] == 3
    np.testing.assert_allclose([p["loss"] for p in progress], want["losses"], rtol=1e-4)
    assert stats["cache_hits"] == 2 * len(y) and stats["macs"] == {**stats["macs"], **want["macs"]}


def test_errors_reach_the_host_and_the_board_keeps_serving(emulator, problem):
    with Client(emulator.port, timeout=10) as board:
        board.reset()
        with pytest.raises(BoardError, match="TRAIN with no fine-tune samples"):
            board.train()
        with pytest.raises(BoardError, match="unknown frame type 0x55") as err:
            board.request(0x55)
        assert err.value.code == F.E_UNKNOWN
        board.port.write(b"\x7e\x01\x02garbage" + F.encode(F.HELLO, 500)[:-1])  # noise, a broken frame
        assert board.hello()["protocol"] == F.PROTOCOL_VERSION


def test_a_silent_port_is_a_clear_link_error():
    with Client("loop://", timeout=0.2, retries=1) as board:  # loop:// echoes our own requests back
        with pytest.raises(LinkError, match="no answer from loop://: is main.py running on the board"):
            board.hello()
    with pytest.raises(LinkError, match="no port /dev/nonexistent-board: is the board plugged in"):
        Client("/dev/nonexistent-board")


def test_a_corrupted_reply_is_retried_and_the_board_does_not_act_twice(emulator, problem):
    model, _, (X, y), _ = problem

    class Noisy(Client):
        corrupt_next = True

        def _events(self, deadline):
            event = super()._events(deadline)
            if event and event[0] == "frame" and self.corrupt_next:  # lose the first reply
                self.corrupt_next = False
                return ("error", F.E_CRC, "frame failed its CRC", event[2])
            return event

    with Client(emulator.port, timeout=10) as board:
        board.reset()
        board.configure(method="skip2-lora", path="float", **CONFIG)
    with Noisy(emulator.port, timeout=10) as board:
        board.seq = 1000
        stored = board.request(F.SAMPLES, _one_sample(X, y))
    assert stored["stored"] == 1  # the retry got the first answer again; one sample stored, not two


def _one_sample(X, y):
    return struct.pack(F.SAMPLES_HEADER, F.KIND_FINETUNE, F.ENC_FLOAT32, 1, X.shape[1]) + struct.pack(
        "<B%df" % X.shape[1], int(y[0]), *X[0])


def test_a_board_speaking_another_protocol_version_is_a_clear_link_error(monkeypatch):
    monkeypatch.setattr(Client, "request", lambda self, ftype, *a, **k: {"protocol": 99})
    with Client("loop://") as board:
        with pytest.raises(LinkError, match="the board speaks protocol 99, this host 1: update the firmware"):
            board.hello()
