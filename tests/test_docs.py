"""Every shell command in README.md and docs/*.md runs as written, or at least parses as written,
so a renamed flag, subcommand, module or make target fails here and not in a user's terminal.

Which text is a command:
- fenced blocks whose info string is `bash`, `sh` or `console`; any other fence (a bare one,
  `text`, `python`) is not checked, so write output and pseudo-syntax (`[--opt]`, `A|B`) there.
- in `bash`/`sh` blocks every non-blank line is a command; in `console` blocks only the lines
  that start with `$ ` (the rest is output).
- a trailing `\\` continues the line; `# ...` to the end of a line is a comment; `&&` separates
  two commands; leading `VAR=value` words are environment, dropped; a `.venv/bin/` prefix is
  dropped from the program.

How each command is checked:
- `skip2lora ...`: parsed by the CLI's own parser, `skip2lora.cli.build_parser()` (abbreviated
  options refused: the docs spell every flag in full). Quick ones are
  also RUN, in a temporary directory, and must exit 0: those with `--help`, `--version` or
  `--dry-run` (each well under a second; `flash --dry-run` builds the firmware with mpy-cross).
  Everything else (a board on /dev/ttyACM0, exports, benchmarks, the demo) is parsed only.
- `python -m skip2lora.X ...`: the module must exist (`importlib.util.find_spec`); its
  `main(argv)` is called with `argparse.ArgumentParser.parse_args` intercepted right after it
  parsed, so the arguments meet the module's own parser and nothing runs.
- `python -m pytest ...`: every argument that names a path exists.
- `make X`: the Makefile has target X.
- `mpremote ...`: the venv has it and its path arguments exist.
- any other program fails the test: add a rule here.

Every option of every CLI subcommand must also appear in that subcommand's section of
docs/guide.md, and every relative link in the docs must reach an existing file and heading.
"""
import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from skip2lora.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SHELL_FENCES = {"bash", "sh", "console"}
QUICK_FLAGS = {"--help", "-h", "--version", "--dry-run"}


def shell_blocks(path):
    """(first line number, info string, lines) of every fenced block in a markdown file."""
    blocks, fence, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence, start, lines = stripped[3:].strip().lower(), number + 1, []
        elif fence is not None and stripped.startswith("```"):
            blocks.append((start, fence, lines))
            fence = None
        elif fence is not None:
            lines.append(line)
    assert fence is None, "%s: a fence opened at line %d is never closed" % (path.name, start - 1)
    return blocks


def commands(path):
    """(where, argv) of every shell command in a markdown file, by the conventions above."""
    found = []
    for start, info, lines in shell_blocks(path):
        if info not in SHELL_FENCES:
            continue
        logical, first = "", None
        for offset, line in enumerate(lines):
            if info == "console" and not logical:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            text = line.rstrip()
            if first is None:
                first = start + offset
            if text.endswith("\\"):
                logical += text[:-1] + " "
                continue
            logical += text
            words = shlex.split(logical, comments=True)
            where = "%s:%d" % (path.relative_to(ROOT), first)
            logical, first = "", None
            command = []
            for word in words + ["&&"]:
                if word == "&&":
                    while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):
                        command.pop(0)
                    if command:
                        if command[0].startswith(".venv/bin/"):
                            command[0] = command[0][len(".venv/bin/"):]
                        found.append((where, command))
                    command = []
                else:
                    command.append(word)
        assert not logical, "%s: a command ends in a continuation" % path.name
    return found


ALL = [(where, argv) for path in DOCS for where, argv in commands(path)]


class _Parsed(Exception):
    pass


@contextlib.contextmanager
def _stop_after_parse():
    """parse_args does its work, then raises _Parsed: a module's main() goes no further."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        _strict(self)
        original(self, args, namespace)
        raise _Parsed()

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _strict(parser):
    """No abbreviated options: the docs spell every flag in full (argparse would take `--epoch`)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def _parse(parse, argv, where):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)
    except SystemExit as e:
        if e.code not in (0, None):  # --help exits 0
            pytest.fail("%s: %s does not parse:\n%s" % (where, shlex.join(argv), err.getvalue().strip()))


def _module(name):
    def find(mod):
        try:
            return importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            return None
    assert find(name) is not None, "no module %s" % name
    return importlib.import_module(name)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "host"), str(ROOT / "firmware")] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def check_skip2lora(where, args, tmp_path):
    _parse(lambda argv: _strict(build_parser()).parse_args(argv), args, where)
    if QUICK_FLAGS & set(args):
        done = subprocess.run([sys.executable, "-c", "from skip2lora.cli import main; main()", *args],
                              cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, "%s: skip2lora %s exited %d:\n%s" % (
            where, shlex.join(args), done.returncode, done.stderr[-2000:])


def check_python_m(where, args):
    assert len(args) >= 2 and args[0] == "-m", "%s: only `python -m MODULE ...` is checked: %s" % (where, args)
    name, rest = args[1], args[2:]
    if name == "pytest":
        for arg in rest:
            if not arg.startswith("-") and ("/" in arg or arg.endswith(".py")):
                assert (ROOT / arg.split("::")[0]).exists(), "%s: pytest path %s does not exist" % (where, arg)
        return
    module = _module(name)
    assert hasattr(module, "main"), "%s: %s has no main()" % (where, name)
    with _stop_after_parse():
        try:
            _parse(module.main, rest, where)
        except _Parsed:
            return
    pytest.fail("%s: %s's main() never parsed its arguments" % (where, name))


def make_targets():
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def check(where, argv, tmp_path):
    program, args = argv[0], argv[1:]
    if program == "skip2lora":
        check_skip2lora(where, args, tmp_path)
    elif program in ("python", "python3"):
        check_python_m(where, args)
    elif program == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a] or ["demo"]  # the first target
        for target in targets:
            assert target in make_targets(), "%s: the Makefile has no target %r" % (where, target)
    elif program == "mpremote":
        assert shutil.which("mpremote", path=os.path.dirname(sys.executable)) or shutil.which("mpremote"), \
            "%s: mpremote is not installed" % where
        for arg in args:
            if "/" in arg and not arg.startswith("/") and ":" not in arg:
                assert (ROOT / arg).exists(), "%s: %s does not exist" % (where, arg)
    else:
        pytest.fail("%s: no rule checks the program %r (tests/test_docs.py)" % (where, program))


def test_the_docs_have_commands():
    assert len(ALL) > 20
    assert any(argv[:2] == ["make", "test"] for _, argv in ALL)  # CI calls `make test`
    assert any(argv[:2] == ["make", "demo"] for _, argv in ALL)


@pytest.mark.parametrize("where,argv", ALL, ids=["%s %s" % (w, " ".join(a[:3])) for w, a in ALL])
def test_command(where, argv, tmp_path):
    check(where, argv, tmp_path)


@pytest.mark.parametrize("argv", [
    ["skip2lora", "run", "--port", "/dev/ttyACM0", "--no-such-flag"],
    ["skip2lora", "no-such-command"],
    ["skip2lora", "run", "--path", "double"],
    ["skip2lora", "run", "--port", "/dev/ttyACM0", "--epoch", "3"],  # abbreviated
    ["python", "-m", "skip2lora.bench.boardbench", "--arena-heap", "241k"],
    ["python", "-m", "skip2lora.bench.boardbench", "--no-such-flag"],
    ["python", "-m", "skip2lora.bench.no_such_module"],
    ["make", "no-such-target"],
    ["rm", "-rf", "out"],
])
def test_a_wrong_command_fails(argv, tmp_path):
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check("(self-test)", argv, tmp_path)


def _sections(path):
    """heading text -> the text under it, up to the next heading of any level."""
    sections, name, fenced = {}, None, False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        if line.startswith("#") and not fenced:
            name = line.lstrip("#").strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return sections


def _subcommands(parser, prefix="skip2lora"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                yield from _subcommands(sub, prefix + " " + name) if nested else [(prefix + " " + name, sub)]


def test_the_guide_documents_every_option():
    sections = _sections(ROOT / "docs" / "guide.md")
    for name, sub in _subcommands(build_parser()):
        text = sections.get("`%s`" % name)
        assert text is not None, "docs/guide.md has no section `%s`" % name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings or [action.dest]:
                assert "`" + option in text, "docs/guide.md, section `%s`: %s is not documented" % (name, option)


def _slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_reach_files_and_headings():
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), "%s: link to %s: no such file" % (path.name, target)
            if anchor and dest.suffix == ".md":
                slugs = {_slug(h) for h in _sections(dest)}
                assert anchor in slugs, "%s: link to %s: no such heading in %s" % (path.name, target, dest.name)


def test_named_source_files_exist():
    """A test, module or tool file the prose names in backticks (`test_x.py`, `firmware/field.py`,
    `tools/mip_package.py`) is in the tree: a moved file fails here, not a reader's search."""
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/**/*.py") if ".venv" not in p.parts
             and "node_modules" not in p.parts}
    names = {f.rsplit("/", 1)[-1] for f in files}
    for path in DOCS:
        for named in re.findall(r"`([\w/.]+\.py)`", path.read_text()):
            found = named in names if "/" not in named else any(f.endswith(named) for f in files)
            assert found, "%s names %s: no such file in the tree" % (path.name, named)
