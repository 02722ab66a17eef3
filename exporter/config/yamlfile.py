"""A YAML error as one line, for every file the agent reads (``--web.config.file``, a scenario).

PyYAML's own message spans several lines and quotes the text around the mark; a list of problems
(one a line, each prefixed with the file) needs ``line L, column C: invalid YAML: what``.
"""

from __future__ import annotations

import yaml


def problem(error: yaml.YAMLError) -> str:
    """``line L, column C: invalid YAML: what (while ... at line L', column C')``: where the parser
    stopped, what it found, and the construct it was in when that started elsewhere."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        what = error.problem or error.context or "unexpected text"
        if error.context and error.problem:
            context = error.context
            start = error.context_mark
            if start is not None and (start.line, start.column) != (mark.line, mark.column):
                context += f" at line {start.line + 1}, column {start.column + 1}"
            what += f" ({context})"
        return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {what}"
    if isinstance(error, yaml.reader.ReaderError):  # bytes the encoding cannot read
        character = f"byte 0x{error.character:02x}" if isinstance(error.character, int) else repr(error.character)
        return f"offset {error.position}: invalid YAML: {character}: {error.reason} (save the file as UTF-8)"
    return "invalid YAML: " + " ".join(str(error).split())
