"""Data parallel from a params switch: a training stage whose ``processes`` param is N > 1 starts N copies of
itself on this machine (torch's elastic launcher, what ``torchrun`` and ``accelerate launch`` run), and each copy
trains on its own contiguous 1/N of every batch (``models/training.py``):

    world size N, rank r = 0..N-1:   process r computes grad of its share, DDP averages: the full-batch update

So ``dvc repro`` stays the owner of the outputs: the params file says how many processes trained a model, DVC
records it, and changing it reruns the stage. A stage already started by a launcher (``accelerate launch``,
``torchrun``) just trains, after checking that the launcher's world size is the one the params name.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

import torch

from ..errors import UserError

__all__ = ["launched_world_size", "launcher", "run_data_parallel"]


def launched_world_size() -> int | None:
    """The world size when this process was started by a distributed launcher (``WORLD_SIZE`` and ``RANK``
    set), else None."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


def run_data_parallel(processes: int, field: str, device: str, command: list[str]) -> int | None:
    """Decide how this training stage runs.

    Returns None when this process should train now: ``processes`` is 1 outside a launcher, or this is one of
    the ``processes`` copies a launcher started. Otherwise runs ``command`` (``[-m, stages.x, *args]``) as
    ``processes`` copies under torch's elastic launcher, waits, and returns the exit code to leave with: 0, or
    that of the first copy that failed (2 for bad input, whose one-line error the copy has printed).
    ``field`` (e.g. ``train_a.processes``) and ``device`` (the params' ``device``) name the params in errors.
    """
    world = launched_world_size()
    if world is not None:
        if world != processes:
            raise UserError(f"{field} is {processes} but the launcher started {world} processes; set {field}: "
                            f"{world} so that DVC records how the model was trained")
        return None
    if processes == 1:
        return None
    on_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda:"):
        raise UserError(f"device {device} pins one GPU but {field} is {processes}; use device: cuda (process r "
                        f"trains on GPU r) or {field}: 1")
    if on_cuda and torch.cuda.device_count() < processes:
        raise UserError(f"{field} is {processes} but {torch.cuda.device_count()} GPU(s) are visible; set it to at "
                        f"most {torch.cuda.device_count()}")
    if not on_cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the copies train on the CPU (gloo), as device says
    return _launch(processes, command)


def launcher(section: str):
    """The ``relaunch`` hook of a training stage (``stages.runner.stage``): run it as ``<section>.processes``
    processes (``run_data_parallel``)."""

    def relaunch(cfg, command: list[str]) -> int | None:
        return run_data_parallel(getattr(cfg, section).processes, f"{section}.processes", cfg.device, command)

    return relaunch


def _launch(processes: int, command: list[str]) -> int:
    """``processes`` copies of ``python command`` under torch's elastic launcher on this machine (a free port,
    no restarts). SIGTERM / SIGINT stop every copy."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the copies print their own errors
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1)
    print(f"data parallel: {processes} processes of {' '.join(command)}", flush=True)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*command)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        code = failure.exitcode
        return 128 - code if code < 0 else (code or 1)  # killed by signal k: 128 + k, like a shell
    except SignalException as exc:  # SIGTERM / SIGINT: the launcher has stopped the copies
        return 128 + int(exc.sigval)
    return 0
