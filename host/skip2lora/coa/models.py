"""A fleet's model files: the CoA-front configuration each board's arena allows (the budget rule of
`export --port`), its model file exported the first time a board needs it, then reused."""
import hashlib
import json
import os
import re
import threading

from .flow import budget_from_hello, model_file, pick, trained_net


class Models:
    """Model files by configuration under `folder`, exported the first time one is asked for. The
    file name carries a digest of the CoA record, so a file of another record is never reused."""

    def __init__(self, record, record_path, scenario_name, folder, progress):
        self.record, self.record_path, self.scenario_name = record, record_path, scenario_name
        self.folder, self.progress = folder, progress
        self.digest = hashlib.sha1(json.dumps([record["network"], record["coa"]]).encode()).hexdigest()[:10]
        self.net = None
        self.lock = threading.Lock()  # one export at a time: boards of one configuration share it

    def choose(self, hello, url):
        """(budget, front entry) of the board at `url`: the budget its HELLO gives, the entry that fits it."""
        budget = budget_from_hello(hello, url)
        return budget, pick(self.record, budget)

    def get(self, entry):
        """(path, file bytes, "exported" or "reused") of a front entry's model file."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", entry["label"].replace("/", ""))
        path = os.path.join(self.folder, "%s-%s-%s.s2lm" % (self.scenario_name, self.digest, slug))
        with self.lock:
            if os.path.exists(path):
                with open(path, "rb") as f:
                    return path, f.read(), "reused"
            if self.net is None:
                self.net = trained_net(self.record, self.record_path, self.scenario_name, progress=self.progress)
            data = model_file(self.record, self.net, entry)
            os.makedirs(self.folder, exist_ok=True)
            with open(path + ".part", "wb") as f:  # renamed whole: a killed export leaves no file to reuse
                f.write(data)
            os.replace(path + ".part", path)
            return path, data, "exported"
