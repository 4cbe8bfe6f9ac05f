"""CPU threads under `accelerate launch`: use the cores this machine gives us unless the user chose a number.

`accelerate launch` without a config sets OMP_NUM_THREADS=1 for the script when neither the user's shell nor
`--num_cpu_threads_per_process` says otherwise, so torch runs on one core of a CPU-only machine. The script's
own environment cannot tell that default from a user's OMP_NUM_THREADS=1; the launcher's environment and
command line, as the user started it, can.
"""

import logging
import os

import psutil
import torch

logger = logging.getLogger(__name__)

THREAD_OPTION = "--num_cpu_threads_per_process"


def is_accelerate_launch(command: list[str]) -> bool:
    names = [os.path.basename(part) for part in command[:3]]
    return ("accelerate" in names and "launch" in command) or bool({"accelerate-launch",
                                                                   "accelerate.commands.launch"} & set(names))


def user_chose_threads(environment: dict, command: list[str]) -> bool:
    return "OMP_NUM_THREADS" in environment or any(part.split("=")[0] == THREAD_OPTION for part in command)


def launcher_default_applies() -> bool:
    """True when this process runs under `accelerate launch` with the OMP_NUM_THREADS=1 it set on its own."""
    if os.environ.get("OMP_NUM_THREADS") != "1":
        return False
    try:
        parent = psutil.Process().parent()  # the launcher, also with --multi_gpu (torchrun's agent runs inside it)
        command, environment = (parent.cmdline(), parent.environ()) if parent else ([], {})
    except psutil.Error:  # another user's process, or a platform that hides it: leave the setting alone
        return False
    return is_accelerate_launch(command) and not user_chose_threads(environment, command)


def cores_per_process() -> int:
    """This process's share of the cores it may run on: every local process (LOCAL_WORLD_SIZE) gets an equal part."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def use_available_cores() -> None:
    """Replace `accelerate launch`'s one-thread default by this process's share of the cores; keep a user's choice."""
    if launcher_default_applies() and (threads := cores_per_process()) > 1:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        logger.info("accelerate launch set OMP_NUM_THREADS=1 by default; using %d threads (this process's share "
                    "of %d cores). Set OMP_NUM_THREADS or %s to choose.", threads, os.cpu_count(), THREAD_OPTION)
    logger.info("torch threads: %d", torch.get_num_threads())
