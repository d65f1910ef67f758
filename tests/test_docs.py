"""The documentation's examples run as written: every fenced block marked `runnable` in README.md and
docs/*.md (```python runnable, ```bash runnable), in order, each file from a fresh folder laid out as a
clone is (`demo_pi/` at hand, the fixtures at `../shared/fixtures`). A `pi ...` or `.venv/bin/pi ...` line
runs this interpreter's `pi_cli`; each python block runs in a fresh interpreter."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(python|bash) runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)
SLOW = {"pi demo"}  # commands that take minutes on two cores: run by CI, skipped by `-m "not slow"`


def runnable_blocks(path: Path) -> list[tuple[str, str]]:
    return [(match[1], match[2]) for match in BLOCK.finditer(path.read_text(encoding="utf-8"))]


def _commands(script: str) -> list[list[str]]:
    """The lines of a bash block (backslash continuations joined), `pi` mapped to this interpreter's pi_cli."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] not in ("pi", ".venv/bin/pi"):
            raise AssertionError(f"A runnable bash line must be a `pi` command, got: {line}")
        commands.append([sys.executable, "-m", "pi_cli", *words[1:]])
    return commands


def _run(command: list[str], cwd: Path, what: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture
def clone_like(tmp_path) -> Path:
    """A working folder beside `shared/fixtures`, with the package's `demo_pi/` in it."""
    (tmp_path / "shared").symlink_to(FIXTURES.parent, target_is_directory=True)
    work = tmp_path / "main"
    work.mkdir()
    (work / "demo_pi").symlink_to(REPO / "demo_pi", target_is_directory=True)
    return work


def _is_slow(command: list[str]) -> bool:
    return any(shlex.join(["pi", *command[3:]]).startswith(name) for name in SLOW)


def _run_document(path: Path, work: Path, slow: bool) -> None:
    """Every runnable block of `path` in order; the slow commands only with `slow`, and then nothing else."""
    for i, (kind, script) in enumerate(runnable_blocks(path)):
        what = f"{path.name} block {i + 1} ({kind})"
        if kind == "python" and not slow:
            _run([sys.executable, "-c", script], work, what)
        elif kind == "bash":
            for command in _commands(script):
                if _is_slow(command) == slow:
                    _run(command, work, f"{what}: {shlex.join(command[3:])}")


DOCUMENTED = [pytest.param(path, id=path.relative_to(REPO).as_posix()) for path in DOCUMENTS if runnable_blocks(path)]


@pytest.mark.parametrize("path", DOCUMENTED)
def test_runnable_examples_run_as_written(path, clone_like):
    _run_document(path, clone_like, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCUMENTED)
def test_slow_runnable_commands_run_as_written(path, clone_like):
    _run_document(path, clone_like, slow=True)


def test_the_readme_has_runnable_examples_of_each_kind():
    kinds = {kind for kind, _ in runnable_blocks(REPO / "README.md")}
    assert kinds == {"python", "bash"}
