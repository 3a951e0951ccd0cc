"""``workbook sweep``: one notebook over a grid of parameter values, each point an ordinary run.

``plan`` turns ``-p NAME "[v1, v2]"`` options into axes and points (each checked as a run would be,
before anything starts); ``state`` keeps ``outputs/sweeps/<id>/sweep.json`` (rewritten atomically,
so the same command after a crash continues); ``local`` runs points in parallel on this machine
without oversubscribing it; ``driver`` ties them together and ``report`` writes the sweep's page.
"""
