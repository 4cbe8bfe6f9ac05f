"""README.md's first-use commands, as a newcomer runs them (install aside), in a fresh copy of the repository: train on
the bundled sample (offline, one epoch), open the app, push to the Hub (the loopback one) and load the model from it
in Python, with and without the project."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, free_port, wait_until_serving
from tests.hub_server import TOKEN, USER

pytestmark = pytest.mark.slow
README = (REPO_ROOT / "README.md").read_text()


def readme_command(starts_with: str) -> str:
    """The README's command line that starts with `starts_with`, without its comment."""
    for line in README.splitlines():
        if line.startswith(starts_with):
            return line.split("  #")[0].strip()
    raise AssertionError(f"README.md has no command starting with {starts_with!r}")


def readme_python() -> str:
    """The README's Python block (the model from the Hub, with and without the project)."""
    return re.search(r"```python\n(.*?)```", README, re.DOTALL).group(1)


def as_run_here(command: str) -> list[str]:
    """A README command started from this Python, as an environment that is not activated runs it."""
    words = command.split()
    if words[:2] == ["accelerate", "launch"]:
        return [sys.executable, "-m", "accelerate.commands.launch", *words[2:]]
    assert words[0] == "python", command
    return [sys.executable, *words[1:]]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The repository's files as a clone has them (tracked and not ignored), in a new folder."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    copy = tmp_path_factory.mktemp("fresh") / "pneumonia-detector"
    for name in listed:
        if (REPO_ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, copy / name)
    return copy


def test_the_readmes_first_use_commands_work_on_a_fresh_copy(fresh_copy, hub):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    train = readme_command("accelerate launch -m trainer --output_dir outputs --no_pretrained")
    result = subprocess.run([*as_run_here(train), "--num_train_epochs", "1"], cwd=fresh_copy, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (fresh_copy / "outputs" / "best" / "model.safetensors").is_file()
    assert (fresh_copy / "outputs" / "all_results.json").is_file()

    app = readme_command("MODEL_ID=outputs/best python app.py")
    assignment, command = app.split(" ", 1)
    port = free_port()
    log = fresh_copy / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen(as_run_here(command), cwd=fresh_copy, stdout=output, stderr=output,
                                   env=env | dict([assignment.split("=")]) | {"GRADIO_SERVER_PORT": str(port),
                                                                              "GRADIO_SERVER_NAME": "127.0.0.1"})
    try:
        assert "gradio" in wait_until_serving(f"http://127.0.0.1:{port}/", process, log).lower()
    finally:
        process.terminate()
        process.wait(timeout=30)

    repo = f"{USER}/readme-model"
    push = readme_command("python -m trainer.push outputs --hub_model_id NAME/REPO").replace("NAME/REPO", repo)
    result = subprocess.run(as_run_here(push), cwd=fresh_copy, env=env | {"HF_TOKEN": TOKEN}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    xray = "sample_data/chest_xray/test/NORMAL/" + sorted(os.listdir(fresh_copy / "sample_data/chest_xray/test/NORMAL"))[0]
    snippet = readme_python().replace("NAME/REPO", repo).replace('"chest_xray.jpeg"', repr(xray))
    code = f"{snippet}\nprint(model.predict({xray!r}))\nprint(classify({xray!r}))\n"  # what the snippet returns
    result = subprocess.run([sys.executable, "-c", code], cwd=fresh_copy, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with_project, without = result.stdout.strip().splitlines()[-2:]
    assert "'PNEUMONIA':" in with_project and "'label': " in without and "'probability': " in without
