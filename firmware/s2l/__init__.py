# skip2lora firmware core: pure MicroPython, also importable by CPython (the host shares its constants).
VERSION = "0.1.0"


def open(model_path="model.s2lm", **settings):
    """The board's learner for a model file (s2l/learner.py: open_learner), imported only when used."""
    from s2l.learner import open_learner
    return open_learner(model_path, **settings)
