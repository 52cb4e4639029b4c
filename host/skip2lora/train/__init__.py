"""Host-side learning: the numpy reference of the methods, pretraining, quantized export, the lr probe."""
