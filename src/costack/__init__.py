"""costack: co-registered stacking of optical and SAR images (Snakemake workflow + library).

The library holds the numerical and I/O logic; the Snakemake rules in ``workflow/`` and the
``costack`` command line are thin wrappers around it.
"""

import os as _os

# Numba runs the parallel kernels on its OpenMP threading layer (GNU libgomp, loaded at the
# first parallel call), whose idle threads spin-wait by default after every parallel region.
# Where processes share cores (Snakemake's concurrent jobs, a test suite's workers, a cluster
# node's other tasks) the spinning steals the cores the others need: three concurrent
# processes of small flows took 19.5 s and 38.6 CPU-s instead of 4.7 s and 9.2 CPU-s. Passive
# waiting costs nothing alone (2000x2000 default flow 0.85-0.95 s against 0.88-1.24 s). A
# value the user sets is kept; it must be set before the first parallel call.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
