"""Options that several commands share are declared once (trainer/options.py, and `--model` in serving/loading.py),
spelled one way everywhere, with one default; an earlier spelling still works, hidden, and says what replaces it."""

import argparse
import re

import pytest

from dataset_scripts import make_sample, push_dataset
from tests.conftest import REPO_ROOT
from trainer import evaluation, predict, push, push_space, recalibrate
from trainer import train as training
from trainer.options import HubOptions, InferenceOptions, add_options

COMMANDS = {"trainer": training.main, "trainer.evaluation": evaluation.main, "trainer.predict": predict.main,
            "trainer.recalibrate": recalibrate.main, "trainer.push": push.main, "trainer.push_space": push_space.main,
            "dataset_scripts.push_dataset": push_dataset.main, "dataset_scripts.make_sample": make_sample.main}
SHARED = {"--seed": ["trainer", "trainer.recalibrate", "dataset_scripts.push_dataset", "dataset_scripts.make_sample"],
          "--num_workers": ["trainer", "trainer.evaluation", "trainer.predict", "trainer.recalibrate"],
          "--per_device_eval_batch_size": ["trainer", "trainer.evaluation", "trainer.predict", "trainer.recalibrate"],
          "--hub_token": ["trainer", "trainer.push", "trainer.push_space", "dataset_scripts.push_dataset"],
          "--hub_private_repo": ["trainer", "trainer.push", "trainer.push_space", "dataset_scripts.push_dataset"],
          "--model": ["trainer.evaluation", "trainer.predict", "trainer.recalibrate"]}
SOURCES = [REPO_ROOT / "app.py", *[p for folder in ("trainer", "serving", "dataset_scripts")
                                   for p in (REPO_ROOT / folder).rglob("*.py")]]


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """The options part of each command's --help, as a user sees it (one line per option: no wrapping)."""
    import contextlib
    import io
    import os

    texts, columns = {}, os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"  # argparse wraps at the terminal's width
    try:
        for name, main in COMMANDS.items():
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
                main(["--help"])
            texts[name] = printed.getvalue().split("options:")[-1]
    finally:
        os.environ.pop("COLUMNS") if columns is None else os.environ.update(COLUMNS=columns)
    return texts


def help_of(option: str, text: str) -> str:
    """The help text of `option` in a command's --help."""
    match = re.search(rf"^\s+{option}(?: [A-Z_]+)?\s+(.+)$", text, re.MULTILINE)
    assert match, option
    return match.group(1).strip()


@pytest.mark.parametrize("option", SHARED)
def test_a_shared_option_is_declared_once_and_reads_the_same_in_every_command(option, helps):
    name = option.removeprefix("--")
    declarations = [f"{path.relative_to(REPO_ROOT)}" for path in SOURCES
                    for _ in re.finditer(rf"add_argument\(\s*\"{option}\"|^\s+{name}: [^=]+= option\(",
                                         path.read_text(), re.MULTILINE)]
    assert len(declarations) == 1, declarations
    texts = {command: help_of(option, helps[command]) for command in SHARED[option] if option != "--model"}
    assert len(set(texts.values())) <= 1, texts  # one definition, one help, one default
    for command in SHARED[option]:
        assert option in helps[command], command


def test_the_seed_defaults_to_42_everywhere(helps):
    for command in SHARED["--seed"]:
        assert "(default: 42)" in help_of("--seed", helps[command]), command


def test_an_earlier_spelling_still_works_hidden_and_says_what_replaces_it(capsys):
    parser = add_options(argparse.ArgumentParser(), InferenceOptions, HubOptions)
    parsed = parser.parse_args(["--batch_size", "8", "--token", "hf_x", "--private"])
    assert (parsed.per_device_eval_batch_size, parsed.hub_token, parsed.hub_private_repo) == (8, "hf_x", True)
    notes = capsys.readouterr().err
    for old, new in (("--batch_size", "--per_device_eval_batch_size"), ("--token", "--hub_token"),
                     ("--private", "--hub_private_repo")):
        assert f"{old} is now {new}" in notes
        assert old not in parser.format_help().replace(new, "")
