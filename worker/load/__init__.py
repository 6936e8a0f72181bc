"""Trained models back in the user's (or the master's) process: ensembles as eval-mode modules
(``ensemble_model``: ``load_ensemble``) and weight soups (``soup``).
"""
