"""Ensembles from numbers on disk: selection among candidates (``ensembles``: top-k, greedy with
replacement, checkpoint and EMA rows), regression ensembles in the targets' units
(``regression_ensembles``) and the build that reads predictions and writes the ensembles table
(``ensemble_run``). A weight soup, which needs torch, is passed in by the caller.
"""
