"""What a model file was exported from, in a record beside it: <model file>.json, written by export.

The record holds a SHA-256 of the lab data as export read it (the pretrain and source-test parts:
features as float32, labels as class indices), the class names, a SHA-256 of the fine-tune set the
lr was probed on (or none), and a SHA-256 of the model file it describes. `run` and `bench` compare
it with the data they are given: a model exported from other data (another lab.csv of the same
shape, other units, other class names) is exported again (a default model under out/models) or
refused (a --model FILE), never reused silently.

Why a record beside the file and not inside it: the model file format (firmware/s2l/modelfile.py)
has no section for it (a board refuses unknown flags and trailing bytes), the board has no use for
it, and a new section would change the format every board parses."""
import hashlib
import json

import numpy as np


def record_path(model_path):
    return model_path + ".json"


def _digest(*parts):
    h = hashlib.sha256()
    for X, y in parts:
        h.update(np.ascontiguousarray(X, np.float32).tobytes())
        h.update(np.ascontiguousarray(y, np.int64).tobytes())
    return h.hexdigest()


def _rows(*parts):
    return sum(len(y) for _, y in parts)


def _source(scenario, probed):
    lab = (scenario.pretrain, scenario.source_test)
    return {"scenario": scenario.name, "from": scenario.description,
            "lab": {"rows": _rows(*lab), "features": scenario.n_features, "sha256": _digest(*lab)},
            "classes": list(scenario.classes),
            "lr_probe": {"rows": _rows(scenario.finetune), "sha256": _digest(scenario.finetune)} if probed else None}


def write(model_path, model_bytes, scenario, probed):
    """Write the record of `model_bytes` at model_path, exported from `scenario` (its lr probed on
    the scenario's fine-tune set when `probed`); returns the record's path."""
    record = dict(_source(scenario, probed), model_sha256=hashlib.sha256(model_bytes).hexdigest())
    path = record_path(model_path)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return path


def read(model_path, model_bytes):
    """The record of this model file, or None: no record, an unreadable one, or one written for
    other model bytes (the file was replaced after export)."""
    try:
        with open(record_path(model_path)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("model_sha256") != hashlib.sha256(model_bytes).hexdigest():
        return None
    return record


def differences(record, scenario):
    """What differs between the data a record's model was exported from and `scenario`: short
    phrases, none when it is the same lab data with the same class names."""
    now = _source(scenario, probed=False)
    found = []
    if record["lab"]["sha256"] != now["lab"]["sha256"]:
        found.append("was exported from other lab data (then: %s, %d rows; now: %s, %d rows, SHA-256 %s.. not %s..)" % (
            record["from"], record["lab"]["rows"], now["from"], now["lab"]["rows"], now["lab"]["sha256"][:8],
            record["lab"]["sha256"][:8]))
    if record["classes"] != now["classes"]:
        found.append("was exported with other class names (then %s; now %s)" % (
            ",".join(record["classes"]), ",".join(now["classes"])))
    return found


def lr_probed_elsewhere(record, scenario):
    """True when the record's lr was probed on a fine-tune set other than the scenario's."""
    probe = record.get("lr_probe")
    return probe is not None and scenario.finetune is not None and probe["sha256"] != _digest(scenario.finetune)
