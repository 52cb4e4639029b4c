"""Every test process computes the same numbers: one BLAS thread (set before numpy is imported),
so a reduction's summation order does not depend on how many threads the machine offers. Seeds are
stated where they are used; claims about methods average over seeds (tests/host/train/test_export.py)."""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
