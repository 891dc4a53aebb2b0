"""The code in README.md and docs/*.md is checked as written, without training anything.

What each kind of fenced block must pass:

* python blocks are compiled. Every ``import kcnn...`` / ``from kcnn... import ...`` line (and ``recipes...``)
  is imported and each imported name must exist; so must every attribute chain on a kcnn module
  (``kcnn.summary``, ``transfer.backbone``, ``kcnn.perf.auto_precision``). The blocks of one file share one
  namespace, in order, as in a notebook. A block is then executed, unless the line before its opening fence is
  ``<!-- no-run -->``: mark so every block that trains, downloads, builds a large model or uses a placeholder
  name (``images_96px``). In an executed block, a bare expression followed by a comment that starts with a
  Python literal (``kcnn.padding_for(32, 32, kernel=5)  # 2``) must equal that literal.
* bash / sh / shell / console blocks: every ``python -m recipes.NAME ARGS`` command is parsed by that recipe's
  own parser (the config class and positional arguments its ``main`` hands to ``recipes._cli.run``, then
  ``recipes._cli.parse``), and nothing runs: an unknown or abbreviated flag, a bad choice or a wrong type
  fails, naming the file and the line. Line continuations, ``&&`` / ``;`` / ``&`` chains, comments and
  ``VAR=value`` prefixes are handled; paths are placeholders (parsing opens no file; ``--config FILE`` is
  skipped for that reason). A ``recipes.finetune --schedule`` value must be a rule, a preset, ``demo`` or a
  ``.toml`` / ``.json`` name. Inline code spans in the prose that start with ``python -m recipes.`` are parsed
  the same way, except templates: spans with ``...``, a word in capitals (``--seed S``) or in brackets
  (``[option]``, ``<dir>``). A recipe whose module needs an optional package that is not installed
  (``bench_torch``: torch) is only checked to exist.
* toml blocks must be valid TOML. One whose first line is a comment naming ``python -m recipes.NAME ...
  --config`` is a config file: each key must be an option of that recipe, of its type and choices. One with
  ``[[phase]]`` tables must load as a schedule (`kcnn.transfer.load_schedule`).
* Every relative link must point to an existing file (and a ``#fragment`` to one of its headings); the README
  must link to every docs/*.md page. A name like ``kcnn.data.FOLDER_MEMORY_BYTES`` in a code span of the prose
  must exist.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import io
import re
import shlex
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_RUN = "<!-- no-run -->"
SHELL = {"bash", "sh", "shell", "console"}
OWN = ("kcnn", "recipes")


@dataclasses.dataclass
class Block:
    file: Path
    line: int           # the 1-based line of the block's first content line
    lang: str
    text: str
    run: bool           # False when the line before the fence is NO_RUN

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = re.match(r"^\s*```\s*([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start, i = i + 1, i + 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            i += 1
        found.append(Block(path, start + 1, m.group(1).lower(), "\n".join(lines[start:i]) + "\n",
                           before != NO_RUN))
        i += 1
    return found


def prose(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, inside = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"^\s*```", line):
            inside = not inside
        elif not inside:
            out.append((n, line))
    return out


def all_blocks(lang: set[str]) -> list[Block]:
    return [b for f in FILES for b in blocks(f) if b.lang in lang]


def _id(block: Block) -> str:
    return block.where


# --- python -------------------------------------------------------------------------------------------------

def _own(module: str) -> bool:
    return module.split(".")[0] in OWN


def _resolve_imports(tree: ast.AST, where: str, bound: dict) -> None:
    """Import the kcnn / recipes modules of ``tree``'s import lines, check the imported names, and record what
    each local name is bound to (for the attribute checks)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _own(alias.name):
                    module = importlib.import_module(alias.name)
                    if alias.asname:
                        bound[alias.asname] = module
                    else:
                        bound[alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _own(node.module):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    with contextlib.suppress(ImportError):
                        importlib.import_module(f"{node.module}.{alias.name}")
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name!r}"
                bound[alias.asname or alias.name] = getattr(module, alias.name)


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    """``a.b.c`` as ("a", ["b", "c"]); None when the chain does not start at a plain name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _check_chain(root, attrs: list[str], what: str, where: str) -> None:
    obj = root
    for name in attrs:
        if not isinstance(obj, types.ModuleType):
            return  # past a class or function: what its attributes are is not a module's business
        if not hasattr(obj, name):  # a submodule not imported yet
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{obj.__name__}.{name}")
        assert hasattr(obj, name), f"{where}: {what} has no attribute {name!r}"
        obj = getattr(obj, name)
        what = f"{what}.{name}"


def _check_attributes(tree: ast.AST, where: str, bound: dict) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain = _chain(node)
            if chain and isinstance(bound.get(chain[0]), types.ModuleType):
                _check_chain(bound[chain[0]], chain[1], chain[0], where)


def _literal_comments(block: Block, tree: ast.Module) -> list[tuple[int, ast.expr, object]]:
    """(line, expression, expected value) for each bare expression followed by ``# LITERAL ...``."""
    lines = block.text.splitlines()
    checks = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.Expr) or stmt.end_lineno != stmt.lineno:
            continue
        comment = lines[stmt.lineno - 1][stmt.end_col_offset:].strip()
        if not comment.startswith("#"):
            continue
        text = comment[1:].strip()
        for end in sorted({m.start() for m in re.finditer(r"[:;]|\s\(|\s[A-Za-z]", text)} | {len(text)}):
            with contextlib.suppress(ValueError, SyntaxError, MemoryError, TypeError):
                checks.append((stmt.lineno, stmt.value, ast.literal_eval(text[:end].strip())))
                break
    return checks


def check_python_blocks(python_blocks: list[Block]) -> None:
    """Compile, resolve and (unless marked no-run) execute python blocks in order, in one namespace; an
    AssertionError names the file and line of the first problem."""
    bound = {"kcnn": importlib.import_module("kcnn")}
    namespace: dict = {"__name__": "__docs__"}
    for block in python_blocks:
        try:
            code = compile(block.text, block.where, "exec")
        except SyntaxError as err:
            raise AssertionError(f"{block.file.relative_to(ROOT)}:{block.line + (err.lineno or 1) - 1}: "
                                 f"{err.msg}") from None
        tree = ast.parse(block.text)
        _resolve_imports(tree, block.where, bound)
        _check_attributes(tree, block.where, bound)
        if not block.run:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(code, namespace)  # noqa: S102 - the documentation's own examples
            except Exception as err:  # noqa: BLE001 - any failure of the block, named
                raise AssertionError(f"{block.where}: the block raised {type(err).__name__}: {err} (mark it "
                                     f"{NO_RUN} if it is not meant to run)") from None
            for line, expr, expected in _literal_comments(block, tree):
                got = eval(compile(ast.Expression(expr), block.where, "eval"), namespace)
                assert got == expected, f"{block.file.relative_to(ROOT)}:{block.line + line - 1}: " \
                                        f"{ast.unparse(expr)} is {got!r}, the comment says {expected!r}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks(path):
    """Each file's python blocks, in order."""
    check_python_blocks([b for b in blocks(path) if b.lang == "python"])


def test_the_python_check_catches_mistakes():
    """The checker itself: a wrong result in a comment, a missing name, a failing block; no-run is not run."""
    readme = ROOT / "README.md"

    def check(text, run=True):
        check_python_blocks([Block(readme, 10, "python", text, run)])

    check("import kcnn\nkcnn.padding_for(32, 32, kernel=5)  # 2\n"
          "kcnn.same_padding(3, stride=2, size=224)  # (0, 1): PyTorch would pad (1, 1)\n")
    check("raise SystemError('not run')\nkcnn.conv_output_size(1)\n", run=False)
    for text, message in (
            ("import kcnn\nkcnn.padding_for(32, 32, kernel=5)  # 3\n",
             "README.md:11: .* is 2, the comment says 3"),
            ("from kcnn import no_such_name\n", "README.md:10: kcnn has no 'no_such_name'"),
            ("import kcnn\nkcnn.arithmetic.no_such_function(1)\n", "no attribute 'no_such_function'"),
            ("x = (\n", "README.md:10: "),
            ("1 / 0\n", "ZeroDivisionError")):
        with pytest.raises(AssertionError, match=message):
            check(text, run="no_such" not in text)


# --- shell commands -----------------------------------------------------------------------------------------

_WRAPPERS = {"env", "nohup", "time", "exec", "command"}
_OPERATORS = {"&&", "||", ";", "&", "|", ";;", "(", ")"}


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(file line, text) of each command line, continuation lines joined and ``$ `` prompts removed."""
    out, current, start = [], "", None
    for n, line in enumerate(block.text.splitlines(), block.line):
        if start is None:
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            start = n
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append((start, current + line))
        current, start = "", None
    if start is not None:
        out.append((start, current))
    return out


def commands(text: str) -> list[list[str]]:
    """The simple commands of one shell line: words split at && || ; & |, comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out, words = [], []
    for token in lexer:
        if token in _OPERATORS:
            out.append(words)
            words = []
        else:
            words.append(token)
    out.append(words)
    return [w for w in out if w]


def recipe_call(words: list[str]) -> tuple[str, list[str]] | None:
    """("finetune", argv) for ``[VAR=x ...] python -m recipes.finetune ARGS``; None for other commands."""
    while words and (re.match(r"^[A-Za-z_]\w*=", words[0]) or words[0] in _WRAPPERS):
        words = words[1:]
    if len(words) >= 3 and re.fullmatch(r"python3?", words[0]) and words[1] == "-m" and \
            words[2].startswith("recipes."):
        return words[2].split(".", 1)[1], words[3:]
    return None


_RECIPES: dict = {}


def recipe_cli(name: str) -> dict | None:
    """What recipes.NAME's main hands to ``_cli.run``: config class, prog, description, positional (None when
    the recipe's module needs an optional package that is not installed)."""
    if name not in _RECIPES:
        from recipes import _cli

        assert (ROOT / "recipes" / f"{name}.py").is_file(), f"no recipe recipes.{name}"
        try:
            module = importlib.import_module(f"recipes.{name}")
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] in OWN:
                raise
            _RECIPES[name] = None  # needs an optional package that is not installed (torch for bench_torch)
            return None
        seen = {}

        def capture(main_fn, config_cls, argv, prog, description, positional=()):
            seen.update(config_cls=config_cls, prog=prog, description=description, positional=positional)
            return 0

        real = _cli.run
        _cli.run = capture
        try:
            module.main([])
        finally:
            _cli.run = real
        assert seen, f"recipes.{name}.main does not go through recipes._cli.run"
        _RECIPES[name] = seen
    return _RECIPES[name]


def _without_config(argv: list[str]) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith("--config="):
            out.append(word)
    return out


def check_command(name: str, argv: list[str], where: str) -> None:
    """Parse ``argv`` with recipes.NAME's own parser; fail naming ``where`` and the parser's message."""
    from recipes import _cli

    cli = recipe_cli(name)
    if cli is None:
        return  # the recipe exists; its parser needs an optional package that is not installed here
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cfg = _cli.parse(cli["config_cls"], _without_config(argv), cli["prog"], cli["description"],
                             cli["positional"])
    except SystemExit as exc:
        if exc.code:
            pytest.fail(f"{where}: python -m recipes.{name} {shlex.join(argv)}: {err.getvalue().strip()}")
        return  # --help
    except ValueError as exc:
        pytest.fail(f"{where}: python -m recipes.{name} {shlex.join(argv)}: {exc}")
    parser = _cli.build_parser(cli["config_cls"], cli["prog"], cli["description"], cli["positional"])
    spelled = {option for action in parser._actions for option in action.option_strings}
    for word in argv:  # argparse takes abbreviations (--resum); the documentation spells each flag in full
        flag = word.split("=", 1)[0]
        if flag.startswith("--") and flag not in spelled:
            pytest.fail(f"{where}: python -m recipes.{name}: {flag} is not spelled in full")
    if name == "finetune" and cfg.schedule is not None:
        from kcnn.transfer import PRESETS, RULES

        key = cfg.schedule.lower().replace("_", "-")
        if not (key in RULES or key in PRESETS or key == "demo" or key.endswith((".toml", ".json"))):
            pytest.fail(f"{where}: --schedule {cfg.schedule}: not a rule ({', '.join(RULES)}), a preset "
                        f"({', '.join(PRESETS)}), demo, nor a .toml/.json file")


def _template(span: str) -> bool:
    """An inline command with an elision or metavariables (``...``, ``--seed S``, ``[option]``, ``<dir>``)."""
    return "..." in span or any(re.fullmatch(r"[A-Z][A-Z_]*|\[.*\]|<.*>", w) for w in span.split())


def shell_commands() -> list[tuple[str, str, list[str]]]:
    """(where, recipe, argv) for every recipe command of every shell block and inline code span."""
    found = []
    for block in all_blocks(SHELL):
        for line, text in logical_lines(block):
            for words in commands(text):
                call = recipe_call(words)
                if call:
                    found.append((f"{block.file.relative_to(ROOT)}:{line}", *call))
    for path in FILES:
        for line, text in prose(path):
            for span in re.findall(r"``?([^`]+)``?", text):
                if span.startswith(("python -m recipes.", "python3 -m recipes.")) and not _template(span):
                    for words in commands(span):
                        call = recipe_call(words)
                        if call:
                            found.append((f"{path.relative_to(ROOT)}:{line}", *call))
    return found


def test_recipe_commands_parse():
    found = shell_commands()
    assert len(found) >= 10, "the recipe commands of README.md and docs/ were not found"
    for where, name, argv in found:
        check_command(name, argv, where)


def test_the_command_check_catches_mistakes():
    """The checker itself: an unknown flag, a bad choice and a wrong type fail; placeholders do not."""
    ok = "python -m recipes.finetune --data path/to/folders --backbone ResNet50 --weights imagenet \\\n" \
         "    --schedule bit --out runs/mine && python -m recipes.export runs/mine --format onnx # note\n"
    block = Block(ROOT / "README.md", 1, "bash", ok, True)
    calls = [recipe_call(w) for _, text in logical_lines(block) for w in commands(text)]
    assert [c[0] for c in calls] == ["finetune", "export"]
    for name, argv in calls:
        check_command(name, argv, "example")
    for bad in (["--no-such-flag"], ["--head", "bogus"], ["--epochs", "five"], ["--schedule", "two-phse"],
                ["--resum"]):
        with pytest.raises(pytest.fail.Exception, match="example"):
            check_command("finetune", bad, "example")
    assert recipe_call(["TF_CONFIG={}", "python", "-m", "recipes.train", "--out", "x"]) == \
        ("train", ["--out", "x"])


# --- toml ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", all_blocks({"toml"}), ids=_id)
def test_toml_blocks(block, tmp_path):
    try:
        data = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as err:
        pytest.fail(f"{block.where}: not valid TOML: {err}")
    recipe = re.match(r"^#.*python3? -m recipes\.(\w+) .*--config\b", block.text)
    if recipe:  # a --config file: each key is checked as that recipe checks it
        from recipes import _cli

        cli = recipe_cli(recipe.group(1))
        fields = {f.name: f for f in dataclasses.fields(cli["config_cls"])}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in fields or name in cli["positional"]:
                pytest.fail(f"{block.where}: recipes.{recipe.group(1)} has no option {key!r}")
            try:
                _cli.check_value(fields[name], value, block.where)
            except ValueError as err:
                pytest.fail(str(err))
    elif "phase" in data:
        from kcnn import transfer

        path = tmp_path / "schedule.toml"
        path.write_text(block.text)
        try:
            transfer.load_schedule(path)
        except ValueError as err:
            pytest.fail(f"{block.where}: not a kcnn schedule: {err}")


# --- links and names ----------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for _, line in prose(path) if (m := re.match(r"^#{1,6}\s+(.*)$", line))}


def links(path: Path) -> list[tuple[int, str]]:
    return [(n, target) for n, line in prose(path)
            for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    for line, target in links(path):
        if re.match(r"^[a-z][\w+.-]*:", target):  # http:, mailto:, ...
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.relative_to(ROOT)}:{line}: {target} does not exist"
        if fragment and dest.suffix == ".md":
            assert fragment in _anchors(dest), \
                f"{path.relative_to(ROOT)}:{line}: no heading #{fragment} in {dest.relative_to(ROOT)}"


def test_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")}
    missing = [p.name for p in FILES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link to docs/{', docs/'.join(missing)}"


def test_kcnn_names_in_prose_exist():
    """``kcnn.x.y`` in the prose's code spans names something that exists."""
    for path in FILES:
        for line, text in prose(path):
            for span in re.findall(r"`([^`]+)`", text):
                m = re.fullmatch(r"(kcnn(?:\.\w+)+)(\(.*\))?", span.strip())
                if m:
                    parts = m.group(1).split(".")
                    _check_chain(importlib.import_module("kcnn"), parts[1:], "kcnn",
                                 f"{path.relative_to(ROOT)}:{line}")
