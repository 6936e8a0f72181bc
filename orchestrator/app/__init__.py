"""The application: the Python API (``api``: run, load, resume), the sweep lifecycle shared by run and
resume (``resume``), the ``caviar`` command (``cli`` and its ``cli_*`` groups), the live view
(``progress``), the answer printed at the end (``answer``, ``failures``) and the HTML report
(``report*``). The only layer of ``orchestrator`` that reaches into ``worker`` and ``cluster``.
"""
