# skip2lora firmware core: pure MicroPython, also importable by CPython (the host shares its constants).
VERSION = "0.1.0"
