"""Formats and contracts: rasters (:mod:`.rasters`), the common grid and its JSON
(:mod:`.grids`), atomic files and JSON (:mod:`.files`), the manifest (:mod:`.manifest`),
georeferencing by transform or GCPs and Sentinel-1 SAFE annotations (:mod:`.georef`,
:mod:`.safe`), radiometry of catalogue items (:mod:`.radiometry`), remote sources
(:mod:`.remote`), STAC items and catalogs (:mod:`.stac`), Cloud Optimized GeoTIFFs (:mod:`.cog`)
and figures (:mod:`.figures`).

The bottom layer: it imports only :mod:`costack.errors`, :mod:`costack.limits` and itself,
never a registration algorithm, a stage or the run.
"""
