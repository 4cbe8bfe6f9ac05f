"""CPU threads under the README's command: real `accelerate launch` runs of a probe that does what the trainer
does first (trainer.threads.use_available_cores) and prints torch's thread count. Two CPU processes splitting
the cores: tests/test_features.py's two-process run."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from trainer.threads import is_accelerate_launch, user_chose_threads

PROBE = """import logging
import torch
from trainer.threads import use_available_cores
logging.basicConfig(level=logging.INFO)  # as trainer/__main__.py does
use_available_cores()
print("torch threads", torch.get_num_threads(), flush=True)
"""
CORES = len(os.sched_getaffinity(0))


def start_launch(probe, **env) -> subprocess.Popen:
    clean_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # `accelerate launch` as a module of this Python: the suite runs from an environment that is not activated
    return subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", str(probe)], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env | {"PYTHONPATH": str(REPO_ROOT)} | env)


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> dict[str, tuple[list[int], str]]:
    """The README's command with nothing set and with OMP_NUM_THREADS=1 in the shell, both launched at once (each is
    mostly one core importing torch): {name: (thread counts printed by each launched process, the launch's stderr)}."""
    probe = tmp_path_factory.mktemp("threads") / "probe.py"
    probe.write_text(PROBE)
    started = {"nothing set": start_launch(probe), "set in the shell": start_launch(probe, OMP_NUM_THREADS="1")}
    launched = {}
    for name, process in started.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        launched[name] = [int(line.split()[-1]) for line in stdout.splitlines() if line.startswith("torch threads")], stderr
    return launched


@pytest.mark.slow
@pytest.mark.skipif(CORES < 2, reason="needs 2 cores to tell the cores from accelerate's default of 1")
def test_the_readme_command_uses_every_core(launches):
    counts, log = launches["nothing set"]
    assert counts == [CORES]
    assert "accelerate launch set OMP_NUM_THREADS=1 by default" in log


@pytest.mark.slow
def test_a_thread_count_set_in_the_shell_is_kept(launches):
    counts, log = launches["set in the shell"]
    assert counts == [1] and "by default" not in log


@pytest.mark.parametrize("launcher_command", [["--num_cpu_threads_per_process", "1"],
                                              ["--num_cpu_threads_per_process=1"]])
def test_a_thread_count_given_to_the_launcher_is_kept(launcher_command):
    command = ["/usr/bin/python3", "/usr/local/bin/accelerate", "launch", *launcher_command, "-m", "trainer"]
    assert is_accelerate_launch(command) and user_chose_threads({}, command)
    assert not user_chose_threads({}, command[:3] + command[-2:])
