"""The learning rate export writes into the model file: picked by cross-validation on the
fine-tune set, and checked against the best rate in hindsight on the test set."""
from dataclasses import replace

import numpy as np

from ..data.scenarios import SPLIT_SEED
from ..progress import bar, plural
from . import reference

LR_CHOICES = (0.01, 0.02, 0.05, 0.1)  # includes reference.Config().lr, the default
# the probe's cross-validation: folds of the fine-tune set, and adapter seeds (initialisation and
# sample order) each fold is trained with
LR_PROBE = {"folds": 5, "seeds": (1, 2, 3)}


def probe_lr(prepared, config, progress=True):
    """Pick the learning rate for Skip2-LoRA on this model and data by cross-validation on the
    fine-tune set: split it into LR_PROBE["folds"] folds (a fixed permutation, SPLIT_SEED); at each
    rate of LR_CHOICES, for each seed of LR_PROBE["seeds"], fine-tune on all folds but one and
    score the one held out. The pick is the rate with the best held-out accuracy over every fold
    and seed (each fine-tune sample is scored once per seed), a tie going to the lower rate. One
    80/20 split scored one training per rate: on 50 held-out samples one run's luck outweighed the
    differences between rates (README). The test set is not touched. Returns the pick and each
    rate's held-out accuracy and mean loss."""
    X, y = prepared.inputs("finetune")
    folds = np.array_split(np.random.default_rng(SPLIT_SEED).permutation(len(y)), min(LR_PROBE["folds"], len(y)))
    seeds = LR_PROBE["seeds"]
    right, losses = {}, {}
    with bar(len(LR_CHOICES) * len(seeds) * len(folds) * config.epochs, "lr probe", progress, "epochs") as b:
        for lr in LR_CHOICES:
            b.set_postfix(lr=lr)
            right[lr], losses[lr] = 0, 0.0
            for seed in seeds:
                for k, held in enumerate(folds):
                    train = np.concatenate([f for j, f in enumerate(folds) if j != k])
                    _, tuner = reference.run(prepared.quantized_net, replace(config, method="skip2-lora", lr=lr, seed=seed),
                                             (X[train], y[train]), (X[held], y[held]), on_epoch=lambda *_: b.update())
                    with np.errstate(over="ignore", invalid="ignore"):  # a diverged rate: an infinite loss
                        z = tuner.logits(X[held]).astype(np.float64)
                        loss = reference.softmax_grad(z, y[held])[1]
                    right[lr] += int((z.argmax(axis=1) == y[held]).sum())
                    losses[lr] += len(held) * (loss if np.isfinite(loss) else float("inf"))
    scored = len(seeds) * len(y)
    pick = max(LR_CHOICES, key=lambda lr: (right[lr], -lr))
    return {"lr": pick, "default_lr": config.lr, "folds": len(folds), "seeds": list(seeds),
            "held_out_accuracy": {str(lr): right[lr] / scored for lr in LR_CHOICES},
            "held_out_loss": {str(lr): losses[lr] / scored for lr in LR_CHOICES},
            "finetune_samples": len(y), "epochs": config.epochs, "rank": config.rank}


def describe_probe(probe):
    """'Skip2-LoRA, 30 epochs, 5-fold cross-validation on 250 fine-tune samples x 3 seeds'."""
    return "Skip2-LoRA, %s, %d-fold cross-validation on %d fine-tune samples x %s" % (
        plural(probe["epochs"], "epoch"), probe["folds"], probe["finetune_samples"], plural(len(probe["seeds"]), "seed"))


def check_lr_probe(prepared, config, progress=True):
    """The probe's pick against the best rate in hindsight: fine-tune Skip2-LoRA on the whole
    fine-tune set at every rate of LR_CHOICES, with each seed of LR_PROBE["seeds"], and score the
    test set. One seed's test accuracy moves by points between seeds (the sample order and the
    adapters' start), so the best rate is the best mean over the seeds; the first seed's figures
    are kept beside. Returns the probe with the test accuracies added."""
    probe = probe_lr(prepared, config, progress)
    seeds = LR_PROBE["seeds"]
    test = {}
    with bar(len(LR_CHOICES) * len(seeds) * config.epochs, "lr check (test set)", progress, "epochs") as b:
        for lr in LR_CHOICES:
            test[str(lr)] = [reference.run(prepared.quantized_net, replace(config, method="skip2-lora", lr=lr, seed=seed),
                                           prepared.inputs("finetune"), prepared.inputs("test"),
                                           on_epoch=lambda *_: b.update())[0]["accuracy"] for seed in seeds]
    mean = {lr: float(np.mean(accs)) for lr, accs in test.items()}
    first = {lr: accs[0] for lr, accs in test.items()}
    pick = str(probe["lr"])
    probe.update(test_accuracy=mean, test_accuracy_per_seed=test,
                 pick_below_best_points=100 * (max(mean.values()) - mean[pick]),
                 pick_below_best_points_first_seed=100 * (max(first.values()) - first[pick]))
    return probe
