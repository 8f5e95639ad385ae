"""The real cause of a failed run: the last meaningful lines of the orchestrator's stderr.

"orchestrator exited with code 3" tells an operator nothing; the line a Python orchestrator
prints last, `openai.RateLimitError: Error code: 429 - ...`, tells what to do. Blank lines,
a traceback's header, its frames (indented: `File ...` and the code under it), the carets
under the code and the "During handling..." links between chained tracebacks are skipped;
what remains is bounded (a few lines, a few hundred characters each) and cleaned of
terminal escapes and control characters, so it fits the status table's WHY column, an
alert and a journal field. Pure: the bytes were already decoded with replacement.
"""

from __future__ import annotations

import re

MAX_LINES = 3
MAX_CHARS = 300

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CARETS = re.compile(r"[\^~\s]+")
_LINKS = (
    "Traceback (most recent call last):",
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
# Only the end of stderr is looked at: a run that printed megabytes is not scanned whole.
_SCAN_CHARS = 64 * 1024


def _clean(line: str) -> str:
    line = _CONTROL.sub("", _ANSI.sub("", line)).strip()
    if len(line) > MAX_CHARS:
        return line[: MAX_CHARS - 1] + "…"
    return line


def _meaningful(raw: str) -> bool:
    if not raw.strip() or raw[:1] in (" ", "\t"):
        return False  # blank, or a traceback frame / its code, indented
    line = _clean(raw)
    return bool(line) and line not in _LINKS and not _CARETS.fullmatch(line)


def cause_lines(stderr: str, limit: int = MAX_LINES) -> list[str]:
    """The last `limit` meaningful lines of `stderr`, oldest first, each cleaned and at most
    MAX_CHARS characters ([] when there is none)."""
    found: list[str] = []
    for raw in reversed(stderr[-_SCAN_CHARS:].splitlines()):
        if _meaningful(raw):
            found.append(_clean(raw))
            if len(found) >= limit:
                break
    return found[::-1]


def cause(stderr: str) -> str | None:
    """The last meaningful line of `stderr` (what the run died of), or None."""
    lines = cause_lines(stderr, 1)
    return lines[0] if lines else None


def with_cause(error: str, stderr: str) -> str:
    """`error` ("orchestrator exited with code 3") followed by the cause, when stderr has one:
    "orchestrator exited with code 3: openai.RateLimitError: 429 ..."."""
    found = cause(stderr)
    return error if found is None else f"{error}: {found}"
