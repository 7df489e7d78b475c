"""Emissions before and during a run: ``lmforge.emissions.estimate`` holds the pre-run
estimator (library + ``python -m lmforge.emissions.estimate``) and the mid-run projection.

Run-time tracking lives in ``lmforge.callbacks.emissions`` (with ``recorder``: live totals and the timeline
CSV, ``method``: what CodeCarbon measured, here); the report over run and sweep
folders in ``lmforge.report``. Nothing is re-exported here: the submodule ``estimate`` and
its function ``estimate`` share a name, so import from the submodule.
"""
