"""CoA-LoRA's hand-written gradients against finite differences, its folding, and that joint
training on a small problem gives back what quantization took for a configuration it never saw."""
import numpy as np
import pytest

from s2l import modelfile as fmt
from skip2lora.coa.model import CoA, damage, softmax
from skip2lora.train import reference
from skip2lora.train.quantconfig import QuantConfig, quantized_network, random_configs

DIMS = [6, 5, 4, 3]
CONFIG = QuantConfig((3, 2, 8), (16, fmt.PER_TENSOR, fmt.PER_CHANNEL))


def small_problem(seed=0):
    rng = np.random.default_rng(seed)
    net = reference.Network([(rng.normal(0, 0.8, (o, i)), rng.normal(0, 0.1, o)) for i, o in zip(DIMS[:-1], DIMS[1:])])
    X = rng.normal(size=(9, DIMS[0]))
    return net, X, softmax(rng.normal(size=(9, DIMS[-1])))  # the targets: distributions, as the float network gives


@pytest.mark.parametrize("configured,gains,temperature", [(True, False, 1.0), (True, True, 2.0), (False, False, 1.0)])
def test_gradients_match_finite_differences(configured, gains, temperature):
    net, X, y = small_problem()
    coa = CoA(DIMS, rank=3, hidden=7, seed=1, configured=configured, gains=gains)
    rng = np.random.default_rng(2)
    for k in coa.params:  # away from the zero start, so every path carries gradient
        coa.params[k] += rng.normal(0, 0.3, coa.params[k].shape)
    inputs, z0 = quantized_network(net, CONFIG).forward(X)
    inputs, z0 = [x.astype(np.float64) for x in inputs], z0.astype(np.float64)
    _, grads = coa.loss_and_grads(CONFIG, inputs, z0, y, temperature)
    assert set(grads) == set(coa.params)
    eps = 1e-6
    for k, p in coa.params.items():
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = coa.loss_and_grads(CONFIG, inputs, z0, y, temperature)[0]
            p[idx] = old - eps
            down = coa.loss_and_grads(CONFIG, inputs, z0, y, temperature)[0]
            p[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grads[k], numeric, rtol=1e-4, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("gains", [False, True])
def test_folded_adapter_gives_the_same_logits(gains):
    net, X, _ = small_problem()
    coa = CoA(DIMS, rank=2, hidden=5, seed=3, gains=gains)
    rng = np.random.default_rng(4)
    for k in coa.params:
        coa.params[k] += rng.normal(0, 0.3, coa.params[k].shape)
    qnet = quantized_network(net, CONFIG)
    inputs, z0 = qnet.forward(X)
    t, gain, _ = coa._config_forward(CONFIG)
    want = z0 + sum(x @ coa.params["a%d" % i] @ t[i].T @ coa.params["b%d" % i] * gain[i] for i, x in enumerate(inputs))
    np.testing.assert_allclose(coa.logits(qnet, CONFIG, X), want, rtol=1e-5, atol=1e-5)
    a_list, b_list = coa.adapter(CONFIG)  # what the board gets: plain Skip-LoRA, balanced factors
    folded = z0 + sum(x @ a @ b for x, a, b in zip(inputs, a_list, b_list))
    np.testing.assert_allclose(folded, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(a_list, b_list):
        np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1), rtol=1e-4)
    back = CoA.from_json(coa.as_json())
    np.testing.assert_array_equal(back.adapter(CONFIG)[0][1], coa.adapter(CONFIG)[0][1])


def test_damage_is_zero_for_the_float_network_and_grows_with_fewer_bits():
    net, X, _ = small_problem()
    assert damage(net, QuantConfig.uniform(3, 8), X) < damage(net, QuantConfig.uniform(3, 4), X) \
        < damage(net, QuantConfig.uniform(3, 2), X)
    assert damage(net, QuantConfig.uniform(3, 8), X) < 1e-3


def test_joint_training_gives_back_what_quantization_took_on_an_unseen_configuration():
    dims = [12, 16, 16, 4]
    rng = np.random.default_rng(5)
    net = reference.Network([(rng.normal(0, 1.2 / np.sqrt(i), (o, i)), rng.normal(0, 0.1, o))
                             for i, o in zip(dims[:-1], dims[1:])], np.float64)
    X = rng.normal(size=(256, dims[0]))
    held = QuantConfig((2, 3, 2), (fmt.PER_TENSOR, fmt.PER_CHANNEL, 16))
    training = [c for c in random_configs(3, 60, np.random.default_rng(6)) if c != held]
    coa = CoA(dims, rank=4, hidden=16, seed=0)
    coa.fit(net, training, X, steps=400, batch=32, lr=1e-2)
    before, after = damage(net, held, X), damage(net, held, X, coa)
    assert after < 0.8 * before, (before, after)  # measured 0.59-0.63 over seeds 0-2; no adapter is 1.0
