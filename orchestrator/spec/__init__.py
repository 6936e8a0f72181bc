"""What the user asked for: the task contract loaded from a file or module (``task``), the run
settings and their checks (``settings``), the task's code carried with the sweep (``task_source``)
and the network exposure a setting implies (``exposure``). Read by the master, the cluster layer and
the workers alike.
"""
