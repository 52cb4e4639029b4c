"""Pretrain on a scenario's source domain and export the quantized model file: what a board is
sent, with the float and quantized networks and a report of what quantization cost."""
from dataclasses import dataclass, replace

from s2l import modelfile as fmt

from ..data.catalog import load_scenario
from . import reference
from .modelfile import fit_norm, normalise, quantization_report, quantize, read_model, read_model_file, write_model
from .pretrain import DEFAULT_HIDDEN, pretrain


@dataclass
class Prepared:
    scenario: object  # its data as the user's files hold it: raw readings, what a board is sent
    float_net: reference.Network
    quantized_net: reference.Network
    model_bytes: bytes
    report: dict
    layers: list = None  # the QuantizedLayers of model_bytes
    norm: tuple = None   # (mean, inv_std) in the model file, or None

    def inputs(self, part):
        """(X, y) of a scenario part ("finetune", "test", ...) as the network takes it: the raw
        readings normalised with the model file's constants, as the board normalises them."""
        X, y = getattr(self.scenario, part)
        return normalise(X, self.norm), y

    def with_lr(self, lr):
        """This export with `lr` written into the model file as the board's default learning rate."""
        model_bytes = write_model(self.layers, norm=self.norm, lr=lr)
        return replace(self, model_bytes=model_bytes, report=dict(self.report, model_bytes=len(model_bytes), lr=lr))


def accuracy(net, X, y):
    return float((net.forward(X)[1].argmax(axis=1) == y).mean())


def network_from_model(model_bytes):
    """The frozen network a board holds: dequantized weights of a model file."""
    return reference.Network([(layer.dequantized(), layer.bias) for layer in read_model(model_bytes)])


def prepare(scenario, bits=None, seed=0, progress=True, data_path=None):
    """Pretrain (deterministic for `seed`) and export; `bits` per layer, 8 everywhere by default.
    scenario: a Scenario, or a name for load_scenario."""
    if isinstance(scenario, str):
        scenario = load_scenario(scenario, data_path)
    bits = check_bits(bits)
    norm = fit_norm(scenario.pretrain[0]) if scenario.normalise else None
    X, y = scenario.pretrain
    net = pretrain(normalise(X, norm), y, len(scenario.classes), seed=seed, progress=progress)
    layers = [quantize(w, b, n) for w, b, n in zip(net.W, net.b, bits)]
    model_bytes = write_model(layers, norm=norm)
    qnet = network_from_model(model_bytes)
    prepared = Prepared(scenario, net, qnet, model_bytes, None, layers, norm)
    prepared.report = _report(prepared, bits, lr=None)
    prepared.report.update(layers=quantization_report(list(zip(net.W, net.b)), layers),
                           source_accuracy_float=accuracy(net, *prepared.inputs("source_test")))
    return prepared


def from_model(scenario, model_bytes, path):
    """A model file as export wrote it (its layers, normalisation and lr, what a board is sent)
    with the scenario's data; no float network, so no float source accuracy."""
    model = read_model_file(model_bytes)
    prepared = Prepared(scenario, None, network_from_model(model_bytes), model_bytes, None, model.layers, model.norm)
    prepared.report = dict(_report(prepared, [layer.bits for layer in model.layers], model.lr), path=path,
                           source_accuracy_float=None)
    return prepared


def _report(prepared, bits, lr):
    qnet = prepared.quantized_net
    report = {"dims": qnet.dims, "bits": bits, "model_bytes": len(prepared.model_bytes),
              "classes": prepared.scenario.classes, "normalised": prepared.norm is not None, "lr": lr,
              "source_accuracy_quantized": accuracy(qnet, *prepared.inputs("source_test"))}
    if prepared.scenario.test is not None:
        report["drifted_accuracy_before"] = accuracy(qnet, *prepared.inputs("test"))
    return report


N_LAYERS = len(DEFAULT_HIDDEN) + 1


def check_bits(bits):
    """Bits per layer, checked before any pretraining: N_LAYERS widths the format has (default 8s)."""
    bits = list(bits or [8] * N_LAYERS)
    if len(bits) != N_LAYERS:
        raise ValueError("--bits needs %d values, one per layer; got %d" % (N_LAYERS, len(bits)))
    widths = fmt.SUPPORTED_BITS[fmt.VERSION]
    bad = [b for b in bits if b not in widths]
    if bad:
        raise ValueError("--bits: %s is not a bit width the model format has (%s)" % (
            bad[0], ", ".join(map(str, widths))))
    return bits
