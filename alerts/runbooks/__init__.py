"""The runbooks: one Markdown file per alert in this folder, read by the generator.

``<AlertName>.md`` holds a ``# <AlertName>`` title and the sections ``## Meaning``, ``## Impact``,
``## Diagnose``, ``## Action``, in this order, each one or more paragraphs of text (README.md in
this folder says how to write one). ``load`` reads and checks them all, and reports every problem
at once; ``python -m alerts.generate`` turns them into docs/runbooks.md, each section one bullet.
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from alerts.params import Params

DIRECTORY = Path(__file__).resolve().parent
SECTIONS = ("Meaning", "Impact", "Diagnose", "Action")
#: Lines that start a Markdown block a section cannot hold: a section becomes one bullet of
#: docs/runbooks.md, its lines joined, which would break a list, a code block, a quote or a table.
_BLOCK = re.compile(r"^\s*(?:[-*+](?:\s|$)|\d+[.)](?:\s|$)|#{1,6}(?:\s|$)|>|```|~~~|\||(?:-{3,}|={3,})\s*$)")


class RunbookError(ValueError):
    """The runbooks do not cover the alerts, or one is malformed: one problem per line."""


@dataclass(frozen=True)
class Runbook:
    """The four sections of an alert's runbook, each as docs/runbooks.md shows it."""

    meaning: str
    impact: str
    diagnose: str
    action: str


def _shown(path: Path) -> str:
    """``path`` as messages show it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(DIRECTORY.parent.parent))
    except ValueError:
        return str(path)


def _text(lines: list[str], params: Mapping[str, str]) -> str:
    """A section's Markdown as one bullet's text: a paragraph's lines joined by spaces (as Markdown
    joins them), further paragraphs indented under the bullet; ``${param}`` replaced by the value of
    that field of ``Params``. Raises KeyError (unknown parameter) or ValueError (a stray ``$``)."""
    paragraphs: list[str] = []
    paragraph: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            paragraphs.append(" ".join(paragraph))
            paragraph = []
    return string.Template("\n\n  ".join(paragraphs)).substitute(params)


def parse(path: Path, name: str, p: Params) -> tuple[Runbook | None, list[str]]:
    """The runbook of alert ``name`` in ``path``, or None and the problems found."""
    problems: list[str] = []
    shown = _shown(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    sections: dict[str, list[str]] = {}
    order: list[str] = []
    current: list[str] | None = None
    title_seen = False
    for number, line in enumerate(lines, 1):
        if line.startswith("# ") and not title_seen and current is None:
            title_seen = True
            if line[2:].strip() != name:
                problems.append(f"{shown}:{number}: the title is `{line.strip()}`, expected `# {name}`")
        elif line.startswith("## "):
            title = line[3:].strip()
            if title not in SECTIONS:
                problems.append(f"{shown}:{number}: unknown section `## {title}` (expected {_expected()})")
            elif title in sections:
                problems.append(f"{shown}:{number}: `## {title}` a second time")
            else:
                order.append(title)
            current = sections.setdefault(title, [])
        elif _BLOCK.match(line):
            problems.append(f"{shown}:{number}: `{line.strip()[:24]}` starts a list, heading, quote, code block, "
                            "table or rule: a section is paragraphs of text (one bullet of docs/runbooks.md)")
        elif current is None:
            if line.strip():
                problems.append(f"{shown}:{number}: text before the first section")
        else:
            current.append(line)
    if not title_seen:
        problems.append(f"{shown}: no title: the first line is `# {name}`")
    missing = [s for s in SECTIONS if s not in sections]
    problems += [f"{shown}: no `## {s}` section" for s in missing]
    if not missing and order != list(SECTIONS):
        problems.append(f"{shown}: the sections are {', '.join(order)}; expected {_expected()}")
    params = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in asdict(p).items()}
    texts: dict[str, str] = {}
    for title in SECTIONS:
        if title not in sections:
            continue
        try:
            texts[title] = _text(sections[title], params)
        except KeyError as e:
            problems.append(f"{shown}: `## {title}` names ${{{e.args[0]}}}, which is no field of Params")
        except ValueError as e:
            problems.append(f"{shown}: `## {title}`: {e} (write $$ for a dollar sign)")
        else:
            if not texts[title]:
                problems.append(f"{shown}: `## {title}` is empty")
    if problems:
        return None, problems
    return Runbook(*(texts[s] for s in SECTIONS)), []


def _expected() -> str:
    return ", ".join(f"`## {s}`" for s in SECTIONS) + " in this order"


def load(names: Iterable[str], p: Params, directory: Path = DIRECTORY) -> dict[str, Runbook]:
    """The runbook of every alert of ``names``, from ``directory``. Raises RunbookError listing every
    problem: an alert without its file, a file of no alert (renamed? deleted?), a malformed file."""
    names = list(names)
    problems: list[str] = []
    runbooks: dict[str, Runbook] = {}
    for name in names:
        path = directory / f"{name}.md"
        if not path.is_file():
            problems.append(f"{_shown(path)}: missing: alert {name} has no runbook (write it with the sections "
                            f"{_expected()})")
            continue
        runbook, found = parse(path, name, p)
        problems += found
        if runbook:
            runbooks[name] = runbook
    for path in sorted(directory.glob("*.md")):
        if path.name != "README.md" and path.stem not in names:
            problems.append(f"{_shown(path)}: no alert is named {path.stem} (rename or delete the file)")
    if problems:
        raise RunbookError("\n".join(problems))
    return runbooks
