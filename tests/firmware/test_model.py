"""The firmware's Model reads every configuration of format v2 (3-bit rows, group and tensor
scales, the optional adapter and normalisation sections) to the same weights as the host reader,
under CPython and the real MicroPython; the float tuner starts from the file's adapter."""
import json

import numpy as np
import pytest

from s2l import modelfile as fmt
from skip2lora.train.modelfile import quantize, read_model_file, write_model

DIMS = [37, 9, 6, 4]
CONFIGS = [  # (bits, granularity) per layer
    ([3, 3, 3], [fmt.PER_CHANNEL, 16, fmt.PER_TENSOR]),
    ([2, 4, 8], [32, fmt.PER_TENSOR, 16]),
    ([8, 2, 3], [16, 32, fmt.PER_CHANNEL]),
]
RANK = 2

SCRIPT = """
import json
from array import array
from s2l.model import load
out = []
for k in range(%d):
    m = load("model%%d.s2lm" %% k)
    x = array("f", [(j %% 7) / 7.0 - 0.4 for j in range(m.dims[0])])
    layers = []
    for i in range(m.n_layers):
        y = array("f", [0.0] * m.dims[i + 1])
        m.mv(i, x[:m.dims[i]], y)
        g = array("f", [(j %% 3) - 1.0 for j in range(m.dims[i + 1])])
        t = array("f", [0.0] * m.dims[i])
        m.mtv(i, g, t)
        layers.append({"w": list(m.dequantized(i)), "mv": list(y), "mtv": list(t), "group": m.group[i],
                       "scales": list(m.scales[i])})
    ad = m.adapter
    out.append({"layers": layers, "adapter": None if ad is None else [ad[0], [list(a) for a in ad[1]], [list(b) for b in ad[2]]],
                "norm": None if m.norm is None else [list(v) for v in m.norm]})
print(json.dumps(out))
"""


def model_bytes(bits, gran, seed, sections):
    rng = np.random.default_rng(seed)
    layers = [quantize(rng.normal(size=(o, i)), rng.normal(size=o), b, g)
              for i, o, b, g in zip(DIMS[:-1], DIMS[1:], bits, gran)]
    adapter = norm = None
    if sections:
        adapter = ([rng.normal(size=(d, RANK)) for d in DIMS[:-1]], [rng.normal(size=(RANK, DIMS[-1])) for _ in bits])
        norm = (rng.normal(size=DIMS[0]), rng.uniform(1, 2, DIMS[0]))
    return write_model(layers, adapter, norm)


def test_model_reads_every_configuration_as_the_host_does(run):
    files = {"model%d.s2lm" % k: model_bytes(b, g, k, k != 1) for k, (b, g) in enumerate(CONFIGS)}
    out = json.loads(run(SCRIPT % len(CONFIGS), files=files))
    for k, got in enumerate(out):
        host = read_model_file(files["model%d.s2lm" % k])
        x = np.array([(j % 7) / 7.0 - 0.4 for j in range(DIMS[0])], np.float32)
        for i, (layer, mine) in enumerate(zip(host.layers, got["layers"])):
            w = layer.dequantized()
            assert np.array_equal(np.array(mine["w"], np.float32).reshape(w.shape), w)  # bit for bit
            gran = layer.granularity
            assert mine["group"] == (gran if gran in fmt.GROUP_SIZES else 0)
            if gran == fmt.PER_TENSOR:  # expanded to one scale per channel
                assert mine["scales"] == [float(layer.scales[0])] * w.shape[0]
            g = np.array([(j % 3) - 1.0 for j in range(w.shape[0])], np.float32)
            np.testing.assert_allclose(mine["mv"], w @ x[:w.shape[1]], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(mine["mtv"], w.T @ g, rtol=1e-4, atol=1e-4)
        if host.adapter is None:
            assert got["adapter"] is None and got["norm"] is None
            continue
        rank, a_list, b_list = got["adapter"]
        assert rank == RANK
        for mine, want in zip(a_list + b_list, host.adapter[0] + host.adapter[1]):
            assert np.array_equal(np.array(mine, np.float32), want.reshape(-1))
        for mine, want in zip(got["norm"], host.norm):
            assert np.array_equal(np.array(mine, np.float32), want)


TUNER_SCRIPT = """
import json
from s2l.model import load
from s2l.tuner import Tuner
from s2l.tuning import TunerError
m = load("model.s2lm")
t = Tuner(m, "skip2-lora", rank=%d, epochs=1, seed=3)
print(json.dumps([[list(ad.a), list(ad.b)] for ad in t.adapters]))
try:
    Tuner(m, "skip2-lora", rank=%d)
except TunerError as e:
    print("TunerError", e)
from s2l.tuning import new_tuner
print(new_tuner(m, path="float").rank, new_tuner(m, path="int").rank)  # no rank: the file's adapter's
"""


def test_float_tuner_starts_from_the_model_adapter(run):
    data = model_bytes(*CONFIGS[0], seed=5, sections=True)
    lines = run(TUNER_SCRIPT % (RANK, RANK + 1), files={"model.s2lm": data}).splitlines()
    host = read_model_file(data)
    for (a, b), want_a, want_b in zip(json.loads(lines[0]), *host.adapter):
        assert np.array_equal(np.array(a, np.float32), want_a.reshape(-1))
        assert np.array_equal(np.array(b, np.float32), want_b.reshape(-1))
    assert lines[1] == "TunerError the model's starting adapter has rank 2, the tuner rank 3"
    assert lines[2] == "2 2"


NORM_SCRIPT = """
import json
from s2l.model import load
from s2l.tuning import new_tuner
data = json.load(open("data.json"))
m = load("norm.s2lm")
out = {"lr": m.lr, "normalised": list(m.normalised(data["raw"][0])),
       "default_lr": [new_tuner(m, "skip2-lora", path=p).lr for p in ("float", "int")],
       "given_lr": new_tuner(m, "skip2-lora", path="int", lr=0.1).lr}
for p in ("float", "int"):
    t = new_tuner(m, "skip2-lora", path=p)
    out[p] = [t.predict(x) for x in data["raw"]]
    for x, label in zip(data["raw"], data["labels"]):
        t.add_sample(x, label)
    out[p + "_stored"] = [t.predict_input(t.sample(0)) if p == "float" else None]
v1 = load("v1.s2lm")
out["v1"] = [v1.lr, v1.norm, v1.dims, new_tuner(v1, "skip2-lora", path="float").lr]
print(json.dumps(out))
"""


def v1_file():
    # a version-1 file written by hand: header with no granularity bytes, flags 0 (5 -> 2, 2 bits)
    import binascii
    import struct
    header = b"S2LM" + struct.pack("<BBH", 1, 1, 0) + struct.pack("<2H", 5, 2) + bytes([2])
    body = header + bytes(fmt.header_size(1, 1) - len(header))
    body += struct.pack("<4f", 0.5, 0.25, 1.0, -1.0) + bytes([0b01001101, 0b11, 0, 0b01])
    return body + struct.pack("<I", binascii.crc32(body) & 0xFFFFFFFF)


def test_raw_readings_are_normalised_on_the_board_as_the_host_reference_does(run):
    # raw sensor units far from the network's input range (mean ~100, spread ~20 per feature): the
    # board's prediction of a raw reading equals the host reference's of the normalised reading
    from skip2lora.train.modelfile import fit_norm, normalise
    from skip2lora.train.reference import Network
    rng = np.random.default_rng(7)
    centre, spread = rng.uniform(50, 150, DIMS[0]), rng.uniform(5, 30, DIMS[0])
    raw = (centre + spread * rng.normal(size=(200, DIMS[0]))).astype(np.float32)
    norm = fit_norm(raw)
    layers = [quantize(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1, 8)
              for i, o in zip(DIMS[:-1], DIMS[1:])]
    net = Network([(layer.dequantized(), layer.bias) for layer in layers])
    logits = net.forward(normalise(raw, norm))[1]
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = np.flatnonzero(top2[:, 1] - top2[:, 0] > 0.05 * np.abs(logits).max(axis=1))[:24]  # no near-ties
    want = logits[clear].argmax(axis=1)
    assert len(set(want)) > 1 and not np.array_equal(net.forward(raw[clear])[1].argmax(axis=1), want)
    files = {"norm.s2lm": write_model(layers, norm=norm, lr=0.02), "v1.s2lm": v1_file(),
             "data.json": json.dumps({"raw": raw[clear].tolist(), "labels": [int(c) for c in want]}).encode()}
    out = json.loads(run(NORM_SCRIPT, files=files))
    assert out["lr"] == pytest.approx(0.02) and out["default_lr"] == [out["lr"]] * 2 and out["given_lr"] == 0.1
    np.testing.assert_allclose(out["normalised"], normalise(raw[clear[:1]], norm)[0], rtol=1e-6, atol=1e-6)
    assert out["float"] == want.tolist() and out["int"] == want.tolist()
    assert out["float_stored"] == [int(want[0])]  # stored samples are the network's input: not normalised twice
    assert out["v1"] == [None, None, [5, 2], 0.05]  # no lr in the file: the tuner's own default
