"""README.md and the guides in docs/: one page for the user, guides that name only what exists, no figures in code."""

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

GUIDES = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [REPO_ROOT / "README.md", *GUIDES]
# a repository path as the docs write it: `folder/file.ext`, `folder/`, or a top-level file with a known suffix
NAMED_PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]*|[\w-]+\.(?:py|md|txt|toml|json|js|html))`")
# where a path is written relative to something other than the repository (an output folder, a repo on the Hub)
NOT_REPO_PATHS = ("outputs", "best/", "train/", "test/", "val/", "NORMAL/", "PNEUMONIA/", "resolve/", "onnx/",
                  "checkpoints/", "feature_cache/", "OUTPUT", "SITE_DIR", "data/", "resnet18", "timm/", "site", "$HF_HOME",
                  "NAME", "sample_data/chest_xray/test/PNEUMONIA/person103")
SPEED_FIGURE = re.compile(r"\d(?:\.\d+)?\s?[x×](?![\w-])|\bfaster\b|\bslower\b|\d+(?:\.\d+)? ?(?:ms|s) per\b")


def test_the_readme_is_one_page_with_the_test_command_and_every_guide():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    assert "<!-- test command -->" in lines  # .ci/run reads the test command after it
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)\)", "\n".join(lines)))
    assert linked == {str(guide.relative_to(REPO_ROOT)) for guide in GUIDES}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_and_path_the_docs_name_exists(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http:", "https:")):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
    for path in NAMED_PATH.findall(text):
        if not path.startswith(NOT_REPO_PATHS) and "/" in path:
            assert (REPO_ROOT / path).exists(), f"{page.name} names {path}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_measured_speed_in_the_docs(page):
    """Figures live in benchmarks/RESULTS.md; a guide links to them."""
    assert not SPEED_FIGURE.findall(page.read_text())


def code_texts(path: Path) -> list[str]:
    """The docstrings and the string constants (help texts, messages) of a Python file."""
    tree = ast.parse(path.read_text())
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_speed_figures_in_help_texts_and_docstrings():
    files = [REPO_ROOT / "app.py", *[p for folder in ("trainer", "serving", "dataset_scripts")
                                     for p in (REPO_ROOT / folder).rglob("*.py")]]
    found = {f"{path.relative_to(REPO_ROOT)}: {match}" for path in files for text in code_texts(path)
             for match in SPEED_FIGURE.findall(text)}
    assert not found


def test_every_file_the_code_names_exists():
    """Docstrings and messages that point to a file (a test, a benchmark, a module) point to one that exists."""
    named = re.compile(r"\b((?:tests|trainer|serving|benchmarks|dataset_scripts|private_mode)/[\w/.-]+\.(?:py|md|js|json))")
    files = [REPO_ROOT / "app.py", *[p for folder in ("trainer", "serving", "dataset_scripts", "tests", "benchmarks")
                                     for p in (REPO_ROOT / folder).rglob("*.py")]]
    missing = {f"{path.relative_to(REPO_ROOT)}: {name}" for path in files for text in code_texts(path)
               for name in named.findall(text) if not (REPO_ROOT / name).exists()}
    assert not missing
