"""The stages: one module per rule file of ``workflow/rules/`` (discover, grid, colocate,
tiepoints, flow, coregister, bandmath, qc, report, catalog), each owning its file-level entry
points (``run_*``), which the rule's script and the ``costack`` subcommand both call.

A stage reads and writes files through :mod:`costack.io` and computes with
:mod:`costack.registration`; it never imports another stage. What several stages read the same
way lives in the private modules beside them (``_common``: the pair's flow mode and the
tie-point model file; ``_tiled``: the tiled flow and warp by windows of large grids), which are
not stages and import no stage. Above: the run (:mod:`costack.cli`, :mod:`costack.plan`,
:mod:`costack.config`), which may import any stage.
"""
