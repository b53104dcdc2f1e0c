"""Docs that cannot drift: every command in the README's and the guides' code blocks must exist and parse, and
every relative link must resolve.

A command line of a ```bash / ```sh / ```shell / ```console block (or of a block without a language, where only
lines that start with a known command count) is checked when it runs one of ours:

    make TARGET [VAR=value ...]        TARGET is a Makefile target; VAR is a variable the Makefile uses; flags
                                       inside VAR (ARGS="--epochs 4") belong to the command the target's recipe
                                       passes VAR to, and must be listed by that command's --help
    textclf VERB [--flag ...]          VERB is one of the command's verbs; every --flag is in `textclf VERB --help`
    python -m MODULE [--flag ...]      MODULE exists; every --flag is in `python -m MODULE [SUBVERB] --help`
    torchrun ... -m MODULE [--flag]    the same, for the module torchrun runs

(`.venv/bin/` in front of python, textclf or torchrun is the same command). Lines are joined at backslash
continuations and split at `&&`, `||`, `;`, `|` and `$(...)`; comments, output lines (a console block's lines
without `$ `), placeholders (`...`, `VERB`, `<name>`) and commands that are not ours (curl, kubectl) are skipped.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK_DOCS = [*COMMAND_DOCS, ROOT / "bench" / "JOURNAL.md"]
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
PREFIXES = {"time", "sudo", "nohup", "env", "exec", "then", "do", "!"}
PLACEHOLDERS = {"...", "…"}
COMMANDS = {"make", "textclf", "python", "python3", "python3.11", "torchrun"}


# ---- Reading the documents ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    lang: str
    first_line: int  # 1-based line of the block's first content line
    lines: tuple[str, ...]


def code_blocks(text: str) -> list[Block]:
    """Fenced code blocks (``` or ~~~), with their language tag."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        blocks.append(Block(lang, start + 1, tuple(lines[start:i])))
        i += 1
    return blocks


def _head(word: str) -> str:
    return word.rsplit("/", 1)[-1] if word.startswith((".venv/", "./", "/", "../")) else word


def _ours(line: str) -> bool:
    return _head(line.split(maxsplit=1)[0]) in COMMANDS


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def command_lines(block: Block) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of each command of a block: continuations joined, multi-line quotes kept whole."""
    if block.lang not in SHELL_LANGS:
        return []
    out, pending, start = [], "", 0
    for offset, raw in enumerate(block.lines):
        line = raw.rstrip()
        if not pending:
            start = block.first_line + offset
            stripped = line.strip()
            if block.lang == "console" and not stripped.startswith("$ "):
                continue  # output
            line = stripped.removeprefix("$ ")
            if line.startswith("#") or not line:
                continue
            if not block.lang and not _ours(line):
                continue  # a block without a language (a diagram, a tree): only our commands count
            pending = line
        else:
            pending += "\n" + line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        try:
            tokens = _tokens(pending)
        except ValueError:  # an open quote: a multi-line string (python -c "...") continues on the next line
            continue
        out.append((start, tokens))
        pending = ""
    if pending:
        out.append((start, ["<unbalanced quotes>", pending]))
    return out


def segments(tokens: list[str]) -> list[list[str]]:
    """The simple commands of one line: split at operators, `$(` and redirections; leading VAR=x dropped."""
    parts, current, skip_next = [], [], False
    for i, token in enumerate(tokens):
        if skip_next:  # the file name after a redirection
            skip_next = False
            continue
        if set(token) <= set("<>&|;()"):
            if token[0] in "<>" or token.endswith((">", "<")):
                skip_next = "&" not in token  # `2>&1` names no file
                if current and current[-1].isdigit() and tokens[i - 1] == current[-1]:
                    current.pop()  # the descriptor of `2>`
                continue
            parts.append(current)
            current = []
            continue
        current.append(token)
    parts.append(current)
    cleaned = []
    for part in parts:
        while part and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", part[0]) or part[0] in PREFIXES):
            part = part[1:]
        if part:
            cleaned.append(part)
    return cleaned


def headings_slugs(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text (outside code blocks)."""
    slugs, seen = set(), {}
    for line in _without_fences(text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def _without_fences(text: str) -> str:
    return re.sub(r"^\s*(`{3,}|~{3,}).*?^\s*\1\s*$", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """The text without its fenced code blocks and inline code spans (links there are not links)."""
    text = _without_fences(text)
    return re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text, flags=re.S)


def links(text: str) -> list[str]:
    prose = _prose(text)
    inline = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    reference = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$", prose, flags=re.M)
    return inline + reference


# ---- What the project offers --------------------------------------------------------------------------------------

@functools.cache
def makefile() -> tuple[frozenset[str], frozenset[str], dict[str, dict[str, tuple[str, ...]]]]:
    """(targets, variables the Makefile uses, {target: {VAR: the command its recipe passes $(VAR) to}})."""
    text = (ROOT / "Makefile").read_text()
    targets, recipes, current = set(), {}, None
    for line in text.splitlines():
        if line.startswith("\t"):
            if current:
                for target in current:
                    recipes.setdefault(target, []).append(line)
            continue
        m = re.match(r"^([A-Za-z0-9_.%/ -]+?)\s*::?(?!=)(.*)$", line)
        if m and not line.lstrip().startswith("#"):
            names = [t for t in m.group(1).split() if not t.startswith(".")]
            targets.update(names)
            current = names
        elif line.strip() and not line.startswith("#"):
            current = None
    variables = set(re.findall(r"\$\((\w+)\)", text)) | set(re.findall(r"^(\w+)\s*[?:+]?=", text, flags=re.M))
    variables |= set(re.findall(r"\$\((?:if|call given),\s*\$?\(?(\w+)", text))
    passes: dict[str, dict[str, tuple[str, ...]]] = {}
    for target, lines in recipes.items():
        recipe = " ".join(lines)
        command = (re.search(r"\$\((?:TEXTCLF|OPS)\)\s+([a-z][\w-]*)", recipe)
                   or re.search(r"-m\s+([\w.]+)", recipe))
        if not command:
            continue
        what = ("textclf", command.group(1)) if "$(" in command.group(0) else ("python -m", command.group(1))
        passes[target] = {var: what for var in re.findall(r"\$\((\w*ARGS)\)", recipe)}
    return frozenset(targets), frozenset(variables), passes


@functools.cache
def verbs() -> frozenset[str]:
    from textclf.cli import VERBS

    return frozenset(VERBS)


def _run_help(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"`{' '.join(args)} --help` exited {r.returncode}: {(r.stderr or r.stdout)[-500:]}")
    return r.stdout


@functools.cache
def verb_help(verb: str) -> str:
    return _run_help(["-m", "textclf", verb])


@functools.cache
def module_help(module: str, subverb: str | None) -> str:
    return _run_help(["-m", module, *([subverb] if subverb else [])])


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---- The checker ---------------------------------------------------------------------------------------------------

def flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if re.match(r"^--[A-Za-z][\w-]*(=|$)", w)]


def missing_flags(used: list[str], help_text: str) -> list[str]:
    return [f for f in used if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]


def _placeholder(word: str) -> bool:
    return word in PLACEHOLDERS or bool(re.match(r"^(<.*>|[A-Z][A-Z_]*|\{.*\})$", word))


def check_textclf(args: list[str], helper=None) -> list[str]:
    helper = helper or verb_help
    if not args or args[0] in ("-h", "--help", "--version"):
        return []
    verb = args[0]
    if _placeholder(verb):
        return []
    if verb not in verbs():
        return [f"textclf has no verb {verb!r}"]
    bad = missing_flags(flags(args[1:]), helper(verb))
    return [f"`textclf {verb}` has no {', '.join(bad)} (textclf {verb} --help)"] if bad else []


def check_module(args: list[str], helper=None) -> list[str]:
    """args: what follows `python` (or torchrun's own options): checked only when it is `-m MODULE ...`."""
    helper = helper or module_help
    if "-m" not in args:
        return []
    i = args.index("-m")
    if i + 1 >= len(args):
        return ["`-m` without a module"]
    module, rest = args[i + 1], args[i + 2:]
    if _placeholder(module):
        return []
    if not module_exists(module):
        return [f"no module {module!r} (python -m {module})"]
    used = flags(rest)
    if not used:
        return []
    subverb = rest[0] if rest and re.match(r"^[a-z][a-z-]*$", rest[0]) else None
    bad = missing_flags(used, helper(module, subverb))
    shown = f"{module} {subverb}" if subverb else module
    return [f"`python -m {shown}` has no {', '.join(bad)} (python -m {shown} --help)"] if bad else []


def check_make(args: list[str], helper=None) -> list[str]:
    targets, variables, passes = makefile()
    problems, named = [], []
    assignments: dict[str, str] = {}
    for word in args:
        if word.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", word, flags=re.S)
        if m:
            assignments[m.group(1)] = m.group(2)
        elif not _placeholder(word):
            named.append(word)
    for target in named:
        if target not in targets:
            problems.append(f"the Makefile has no target {target!r}")
    for var, value in assignments.items():
        if var not in variables:
            problems.append(f"the Makefile uses no variable {var}")
            continue
        if not var.endswith("ARGS"):
            continue
        takers = [passes[t][var] for t in named if t in passes and var in passes[t]]
        if named and not takers:
            problems.append(f"make {' '.join(named)} passes no {var} to a command")
            continue
        try:
            inner = shlex.split(value)
        except ValueError:
            problems.append(f"{var}={value!r}: unbalanced quotes")
            continue
        for kind, name in takers[:1]:
            if kind == "textclf":
                problems += check_textclf([name, *inner], helper and (lambda v: helper(("textclf", v))))
            else:
                problems += check_module(["-m", name, *inner], helper and (lambda m, s: helper((m, s))))
    return problems


def check_command(tokens: list[str], helper=None) -> list[str]:
    """Problems of one command line (tokens as shlex gives them). `helper`, for tests: (what) -> help text."""
    if tokens and tokens[0] == "<unbalanced quotes>":
        return [f"unbalanced quotes: {tokens[1][:80]!r}"]
    problems = []
    for part in segments(tokens):
        head = _head(part[0])
        rest = [w for w in part[1:] if w not in PLACEHOLDERS]
        if head == "make":
            problems += check_make(rest, helper)
        elif head == "textclf":
            problems += check_textclf(rest, helper and (lambda v: helper(("textclf", v))))
        elif head in COMMANDS:
            problems += check_module(rest, helper and (lambda m, s: helper((m, s))))
    return problems


def doc_problems(path: Path, text: str | None = None, helper=None) -> list[str]:
    text = path.read_text() if text is None else text
    out = []
    for block in code_blocks(text):
        for line, tokens in command_lines(block):
            out += [f"{path.relative_to(ROOT) if path.is_absolute() else path}:{line}: {p}"
                    for p in check_command(tokens, helper)]
    return out


def link_problems(path: Path, text: str | None = None) -> list[str]:
    text = path.read_text() if text is None else text
    out = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        if not file_part:
            if anchor not in headings_slugs(text):
                out.append(f"{path.name}: link to {target}: no such heading")
            continue
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists():
            out.append(f"{path.name}: link to {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in headings_slugs(resolved.read_text()):
            out.append(f"{path.name}: link to {target}: no heading #{anchor} there")
    return out


# ---- The tests -----------------------------------------------------------------------------------------------------

def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=_rel)
def test_commands_in_code_blocks_exist_and_parse(doc):
    problems = doc_problems(doc)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", LINK_DOCS, ids=_rel)
def test_relative_links_resolve(doc):
    problems = link_problems(doc)
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_page_that_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(readme) if not re.match(r"^\w+:", t)}
    guides = set((ROOT / "docs").rglob("*.md"))
    assert guides, "docs/ holds no guide"
    assert not guides - linked, f"guides the README does not link: {sorted(_rel(g) for g in guides - linked)}"


# The checker itself, on documents written to fail: a docs test that cannot fail proves nothing.
FAKE_HELP = {("textclf", "train"): "usage: textclf train [--data DATA] [--learning-rate LR] [--output-dir D]",
             ("training.train", None): "usage: train.py [--data DATA] [--learning-rate LR]"}


def _fake(what):
    return FAKE_HELP[what]


BAD_DOC = """\
Text with a [link](no/such/file.md) and a [good one](README.md).

```bash
textclf train --data x --lerning-rate 1e-4           # misspelt flag
.venv/bin/textclf trian --data x                      # misspelt verb
make trian DATA=x                                     # misspelt target
make train DAT=x                                      # misspelt variable
make train DATA=x ARGS="--data y --epochz 3"          # a flag inside ARGS
python -m training.trian --data x                     # no such module
.venv/bin/python -m training.train --learning_rate 1  # underscore
```
"""

GOOD_DOC = """\
```bash
textclf train --data x --learning-rate 1e-4 \\
    --output-dir runs/x    # continued
make train DATA=x RUN=runs/x ARGS="--learning-rate 1e-4" && textclf VERB --help
KEY=$(.venv/bin/python -m training.train --data x) | grep x; make stop serve
.venv/bin/python -c "
print('a multi-line string: not a command')"
curl -s --made-up-flag http://127.0.0.1:8080/ping   # not ours
make ...
```

```console
$ textclf train --data x
textclf train --no-such-flag    (output, not a command)
```

```python
textclf.train(--no-such-flag)
```
"""


def test_the_checker_catches_each_kind_of_mistake(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "verbs", lambda: frozenset({"train"}))
    doc = ROOT / "bad.md"
    problems = doc_problems(doc, BAD_DOC, helper=_fake)
    expected = ["--lerning-rate", "no verb 'trian'", "no target 'trian'", "no variable DAT", "--epochz",
                "no module 'training.trian'", "--learning_rate"]
    for needle in expected:
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert len(problems) == len(expected), problems
    assert [p.split(":")[1] for p in problems][:2] == ["4", "5"]  # the line numbers of the document

    assert doc_problems(doc, GOOD_DOC, helper=_fake) == []

    (tmp_path / "README.md").write_text("# Title\n## A heading: `with code`\n")
    page = tmp_path / "page.md"
    text = ("[a](README.md) [b](README.md#a-heading-with-code) [c](README.md#nope) [d](missing.md) "
            "[e](https://example.com/x) [f](#title) `[g](in-code.md)`\n# Title\n")
    problems = link_problems(page, text)
    assert len(problems) == 2 and "#nope" in problems[0] and "missing.md" in problems[1], problems
