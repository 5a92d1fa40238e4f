"""costack: co-registered stacking of optical and SAR images (Snakemake workflow + library).

The library holds the numerical and I/O logic; the Snakemake rules in ``workflow/`` and the
``costack`` command line are thin wrappers around it.
"""

__version__ = "0.1.0"
