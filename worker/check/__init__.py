"""Checks of a task before any trial: the contract run once on the master before Ray starts
(``contract``), one config's model, optimizer and batch (``validate``) and ``caviar check``'s sanity
checks (``preflight``: initial loss, regularisation, overfitting a few examples).
"""
