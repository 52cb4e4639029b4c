"""Firmware code run on the host: CPython, MicroPython (WebAssembly, unix port), Thumb machine code."""
