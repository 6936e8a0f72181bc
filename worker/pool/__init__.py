"""Trials in child processes of the master, without Ray: ``executor="processes"`` (:mod:`worker.pool.processes`)."""
