"""The task's data as a trial sees it: splits in memory or streamed through DataLoaders (``splits``,
``streams``), inputs in their own dtype, and what the targets are (``kinds``: classification, soft
labels, regression, custom), refused in one line when they do not fit.
"""
