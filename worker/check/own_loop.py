"""A task's own ``train_epoch`` run on two training batches before the sweep, in a forked child.

The contract check's forward and backward pass go through caviar's loop; a task's own loop (a typo such as
``loss.backwards()``, a dict without ``train_loss``) failed only in the trials, after the workers started (on a
cluster, after an autoscaler had brought up their nodes). A child process runs it so that whatever the loop changes
(a module-level step counter, the throwaway model) stays there: forked workers start from the master's state, and
must not start from a state two batches into a check.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch

from orchestrator.errors import TaskError
from orchestrator.spec.settings import ray_joined
from orchestrator.spec.task import Task
from worker.train.forking import start_method
from worker.train.trainer import TrialRun

CHECK_BATCHES = 2
CHECK_SECONDS = 120.0  # a loop slower than this on two batches is left to the trials, not waited for
# Device code meets a CPU model here (xb.cuda() in the loop): the trials' device decides, not this check.
_DEVICE_WORDS = ("cuda", "device", "mps", "xla")


def check_own_loop(task: Task, run: TrialRun, refusal: Callable[[BaseException], TaskError]) -> None:
    """Refuse a ``train_epoch`` that raises on two batches of ``run``'s config with ``refusal``'s line for its error.

    Only where the master may be forked as the process executor's workers are (Linux, data in memory, nothing
    compiled, no CUDA in use, no Ray joined in this process); elsewhere the trials find such a loop's error.
    """
    if task.get("train_epoch") is None or start_method(1, run.splits) != "fork":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # a forked child cannot use the parent's CUDA
        return
    if ray_joined():  # a process that joined Ray holds gRPC threads, which a fork does not survive
        return
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_run_in_child, args=(run, send, refusal), daemon=True)
    child.start()
    send.close()
    try:
        said = receive.recv() if receive.poll(CHECK_SECONDS) else None
    except EOFError:  # the child died without a word (killed, out of memory): the trials will say what happened
        said = None
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join()
    if said:
        raise TaskError(said)


def _run_in_child(run: TrialRun, send: Connection, refusal: Callable[[BaseException], TaskError]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the master's to handle
    torch.set_num_threads(1)  # GNU OpenMP does not survive a fork once the parent used its threads
    said = None
    try:
        run.own_epoch(run.first_batches(CHECK_BATCHES))
    except Exception as exc:
        raised = f"{exc} {exc.__cause__ or ''}".lower()  # the error's words, not the task's path in the line
        said = None if any(word in raised for word in _DEVICE_WORDS) else str(refusal(exc))
    send.send(said)
    send.close()
