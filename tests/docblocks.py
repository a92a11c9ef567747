"""The code blocks of the docs (README.md, CONTRIBUTING.md, docs/**/*.md), for the tests to run.

Every fenced block must name its language. ```python, ```bash/```sh/```shell and ```console
blocks are examples: the tests run them (tests/test_docs.py). An HTML comment on the lines
just above a block says how (the reader of the rendered page does not see it):

    <!-- test: markers=docker,slow session=first-env timeout=900 -->

- markers=...: the test group whose services the example needs (pytest markers).
- session=NAME: blocks of one page with the same session run as one test, in page order,
  in one working directory; consecutive Python blocks of it run as one script, so a block
  may continue the one before (its imports and variables).
- lines=1,2: run only these lines of the block (a comment says why the others are not).
- timeout=SECONDS: the test's timeout (default 300).
- file=PATH: the block is a file's content (of any language): the test writes it to PATH in
  the working directory instead of running it, for the blocks after it.
- background: a command that serves until Ctrl-C (a foreground `portal-env start`, a bare
  `python env_main.py`): the test runs it in the background, goes on once it prints that it
  is ready (`ready at` or `serving on`), and presses Ctrl-C at the end of the session; it
  must then exit 0.
- skip: not run. The block must then carry a visible line right after the comment,
  `> **Not run here:** REASON`, which the reader sees and the tests report.
- (words in parentheses): a note for the maintainer.

A ```console block runs its `$ ` lines one by one; the lines shown after a command are its
expected output (stdout and stderr), compared line by line, where `...` stands for any text
and a line of only `...` for any number of lines;
a command shown without output must exit 0. A block of any other language (text, yaml,
toml, dockerfile, ...) is shown, never run, unless it has file=.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
RUN_LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash",
                 "shell": "bash", "console": "console"}  # fmt: skip
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
DIRECTIVE = re.compile(r"^\s*<!--\s*test:(?P<body>.*?)-->\s*$")
NOT_RUN = re.compile(r"^\s*>\s*\*\*Not run here:\*\*\s*(?P<reason>\S.*)$")
OPTIONS = {"markers", "session", "lines", "timeout", "file"}
FLAGS = {"skip", "background"}


class DocsFormatError(ValueError):
    """A block or directive the collector cannot accept; the message names file and line."""


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str  # "python", "bash" or "console" for examples; else the fence's word
    code: str
    markers: Tuple[str, ...] = ()
    session: Optional[str] = None
    lines: Optional[Tuple[int, ...]] = None
    timeout: Optional[float] = None
    file: Optional[str] = None  # written to this path, not run
    background: bool = False
    skip: Optional[str] = None  # the visible reason

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"

    @property
    def runnable(self) -> bool:
        """Whether the tests use it: an example to run, or a file an example reads."""
        return self.language in ("python", "bash", "console") or self.file is not None

    def script(self) -> str:
        """The code to run (or write): the chosen lines of the block."""
        if self.file is not None:
            return self.code + "\n"
        source = self.code.splitlines()
        if self.lines is not None:
            source = [source[i - 1] for i in self.lines]
        return "\n".join(source) + "\n"


@dataclass
class Session:
    """What one test runs: one block, or the blocks of one page's session."""

    name: str
    blocks: List[Block] = field(default_factory=list)

    @property
    def markers(self) -> Tuple[str, ...]:
        return tuple(sorted({m for b in self.blocks for m in b.markers}))

    @property
    def timeout(self) -> float:
        return max([b.timeout for b in self.blocks if b.timeout] or [300.0])

    def steps(self) -> List[Step]:
        """What to do, in order; consecutive Python blocks are joined into one script."""
        steps: List[Step] = []
        for block in self.blocks:
            kind = "file" if block.file else block.language
            if steps and kind == "python" == steps[-1].kind and not block.background:
                steps[-1].code += "\n" + block.script()
                steps[-1].blocks.append(block)
            else:
                steps.append(Step(kind, block.script(), [block], block.background, block.file))
        return steps


@dataclass
class Step:
    kind: str  # "python", "bash", "console" or "file"
    code: str
    blocks: List[Block]
    background: bool = False
    file: Optional[str] = None

    @property
    def where(self) -> str:
        return ", ".join(b.where for b in self.blocks)


def sources() -> List[Path]:
    """The Markdown files whose examples the tests run."""
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse(path: Path) -> List[Block]:
    """Every fenced block of a Markdown file, with its directive; DocsFormatError if bad."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            # CommonMark: a backtick fence's info string has no backticks (else: inline code)
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        end = i + 1
        while end < len(lines) and not _closes(lines[end], fence, indent):
            end += 1
        if end == len(lines):
            raise DocsFormatError(f"{path}:{i + 1}: a code block that is never closed")
        body = [_dedent(line, indent) for line in lines[i + 1 : end]]
        blocks.append(_block(path, lines, i, opening["info"], "\n".join(body)))
        i = end + 1
    return blocks


def _closes(line: str, fence: str, indent: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]} and line.startswith(indent)


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip()


def _block(path: Path, lines: List[str], at: int, info: str, code: str) -> Block:
    words = info.split()
    word = words[0].lstrip(".{").rstrip("}").lower() if words else ""
    where = f"{path}:{at + 1}"
    if not word:
        raise DocsFormatError(
            f"{where}: a code block without a language; write ```bash, ```python, or "
            "```text for output (only bash, console and python blocks are run)"
        )
    block = Block(path, at + 1, RUN_LANGUAGES.get(word, word), code)
    directive, reason = _directive_above(lines, at, where)
    if directive is None:
        if reason is not None:
            raise DocsFormatError(f"{where}: a 'Not run here' line needs <!-- test: skip --> above")
        return block
    _apply(block, directive, reason, where)
    if not block.runnable and block.skip is None:
        raise DocsFormatError(f"{where}: a test directive on a ```{word} block without file=")
    return block


def _directive_above(lines: List[str], at: int, where: str) -> Tuple[Optional[str], Optional[str]]:
    """The directive comment and the visible 'Not run here' reason just above line at."""
    reason = None
    j = at - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j >= 0 and NOT_RUN.match(lines[j]):
        reason = NOT_RUN.match(lines[j])["reason"].strip()
        j -= 1
        while j >= 0 and not lines[j].strip():
            j -= 1
    if j >= 0 and DIRECTIVE.match(lines[j]):
        return DIRECTIVE.match(lines[j])["body"], reason
    if j >= 0 and "<!--" in lines[j] and "test:" in lines[j]:
        raise DocsFormatError(f"{where}: a test directive must be one line: <!-- test: ... -->")
    return None, reason


def _apply(block: Block, directive: str, reason: Optional[str], where: str) -> None:
    body = re.sub(r"\([^)]*\)", " ", directive)  # notes for the maintainer
    words = shlex.split(body)
    options: Dict[str, str] = {}
    for word in words:
        if word in FLAGS:
            options[word] = ""
            continue
        key, sep, value = word.partition("=")
        if not sep or key not in OPTIONS or not value:
            raise DocsFormatError(
                f"{where}: unknown test directive {word!r}; use skip, background, "
                + ", ".join(f"{k}=..." for k in sorted(OPTIONS))
            )
        options[key] = value
    if "skip" in options:
        if reason is None:
            raise DocsFormatError(
                f"{where}: <!-- test: skip --> needs a visible line below it: "
                "'> **Not run here:** REASON'"
            )
        if len(options) > 1:
            raise DocsFormatError(f"{where}: skip takes no other options")
        block.skip = reason
        return
    if reason is not None:
        raise DocsFormatError(f"{where}: a 'Not run here' line on a block that runs; add skip")
    if "markers" in options:
        block.markers = tuple(options["markers"].split(","))
    block.session = options.get("session")
    block.file = options.get("file")
    block.background = "background" in options
    if block.background and block.language != "bash":
        raise DocsFormatError(f"{where}: background applies to a ```bash block")
    if "timeout" in options:
        block.timeout = float(options["timeout"])
    if "lines" in options:
        block.lines = tuple(int(n) for n in options["lines"].split(","))
        count = len(block.code.splitlines())
        if not all(1 <= n <= count for n in block.lines):
            raise DocsFormatError(f"{where}: lines={options['lines']} but the block has {count}")


def console_commands(code: str) -> List[Tuple[str, Optional[str]]]:
    """The (command, expected output or None) pairs of a console block."""
    pairs: List[Tuple[str, List[str]]] = []
    continuing = False
    for line in code.splitlines():
        if continuing:
            pairs[-1] = (pairs[-1][0] + "\n" + line, pairs[-1][1])
        elif line.startswith("$ "):
            pairs.append((line[2:], []))
        elif pairs:
            pairs[-1][1].append(line)
            continue
        continuing = line.rstrip().endswith("\\")
    return [(command, "\n".join(out).strip("\n") or None) for command, out in pairs]


def output_matches(expected: str, actual: str) -> bool:
    """Whether actual output is the expected one, line ends ignored: `...` in a line is any
    text, and a line of only `...` any number of lines (none too)."""
    got = "".join(line.rstrip() + "\n" for line in actual.strip("\n").splitlines())
    pattern = "".join(
        r"(?:.*\n)*?" if line == "..." else ".*?".join(map(re.escape, line.split("..."))) + "\n"
        for line in (line.rstrip() for line in expected.strip("\n").splitlines())
    )
    return re.fullmatch(pattern, got, flags=re.DOTALL) is not None


def sessions(blocks: List[Block]) -> List[Session]:
    """The runnable blocks grouped into what each test runs, in file order."""
    grouped: Dict[str, Session] = {}
    for block in blocks:
        if not block.runnable or block.skip is not None:
            continue
        page = _shown(block.path)
        key = f"{page}::{block.session}" if block.session else f"{page}:{block.line}"
        grouped.setdefault(key, Session(key)).blocks.append(block)
    return list(grouped.values())


def _shown(path: Path) -> str:
    """path as the tests name it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def collect() -> Tuple[List[Block], List[str]]:
    """Every block of every source, and the format errors found (file:line: what)."""
    blocks: List[Block] = []
    errors: List[str] = []
    for path in sources():
        try:
            blocks.extend(parse(path))
        except DocsFormatError as error:
            errors.append(str(error))
    return blocks, errors


def main() -> None:
    """Print what the tests run and what they do not, with why (`python3 -m tests.docblocks`)."""
    blocks, errors = collect()
    runnable = [b for b in blocks if b.runnable]
    ran = [b for b in runnable if b.skip is None]
    files = [b for b in ran if b.file is not None]
    print(
        f"{len(ran) - len(files)} examples run, and {len(files)} files written for them, in "
        f"{len(sessions(blocks))} tests; {len(runnable) - len(ran)} not run here:"
    )
    for block in runnable:
        if block.skip is not None:
            print(f"  {block.where}: {block.skip}")
    for error in errors:
        print(f"ERROR {error}")


if __name__ == "__main__":
    main()
