"""The README's two set-up commands are what CI runs; the README stays short and shows, on its first screen,
how to fine-tune on the user's own folder."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The README's limit in bytes: what does not fit goes to a page of docs/ (tests/test_docs.py checks the
#: links).
README_MAX_BYTES = 12_000
#: Lines after the title that a first screen shows.
FIRST_SCREEN = 40


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert all(c.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install") for c in commands)
    assert commands[1].endswith("python -m pytest -q")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _readme_commands()[1].replace('pip install -e', 'pip install -q -e')
    assert test_command in ci


def test_readme_is_under_its_size_limit():
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_MAX_BYTES, \
        f"README.md is {size:,} bytes; move a section to docs/ (limit {README_MAX_BYTES:,})"


def test_first_screen_shows_how_to_fine_tune_on_your_own_folder():
    """After the set-up commands and within the first screen: the fine-tuning command for a folder, its flags
    and where the results go."""
    lines = (ROOT / "README.md").read_text().splitlines()[1:1 + FIRST_SCREEN]
    setup = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv"))
    command = next(i for i, line in enumerate(lines) if line.startswith("python -m recipes.finetune --data "))
    assert setup < command
    screen = "\n".join(lines)
    for flag in ("--backbone", "--weights", "--image-size", "--schedule", "auto", "fastai", "bit",
                 "keras-guide", "--out", "--resume", "--overwrite", "run folder"):
        assert flag in screen, f"the README's first {FIRST_SCREEN} lines do not mention {flag}"
