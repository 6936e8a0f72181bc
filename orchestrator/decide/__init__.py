"""What runs next: the controller's state machine over trials and stages (``controller``), pruners
(``pruning``), fused-array grouping (``fusing``), the ``Backend`` protocol that executes assignments
(``backend``; ``simulate`` replays synthetic curves), the loop that joins them (``driver``), the
journal that writes every decision to the tables (``sweeplog``) and the stop flag set by Ctrl-C or
SIGTERM (``interrupt``). Imports ``search`` and ``store``; never Ray or torch.
"""
