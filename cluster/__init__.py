"""Everything that imports Ray, and nothing else does: the one package a Ray upgrade touches.

Kept flat (nine modules, read in this order) because each is one step of one path:
``runner`` connects (or starts a private Ray), sizes the slots (``capacity``) and opens the
backend: ``fused_setup`` chooses between the plain ``pool`` of ``actor`` processes (one trial
each, kept warm between sweeps of a process by ``warm_pool``) and the fused arrays of
``fused_pool``. ``jobs`` submits, lists, follows and stops sweeps on a cluster's Job API, and
``ray_logs`` keeps Ray's own log lines out of caviar's one-line errors. ``configs/`` holds
cluster launcher YAML.
"""
