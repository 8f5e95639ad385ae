"""The orchestrator's command line: its argv template filled in, with the handoff and sources.

`render_argv` fills `{target}`, `{state_root}` and `{iteration}` into a template (config
preflight checks the result); `argv_for` adds the handoff and the feedback sources passed
with it; `argv_and_log` does that and opens the run's log in the same (blocking) call, the
one worker hand-off before a run starts (issue 24).
"""

from __future__ import annotations

from pathlib import Path

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.runs import feedback
from autoloop_daemon.runs.run_log import open_run_log

__all__ = ["argv_and_log", "argv_for", "expand_sources", "render_argv"]


def render_argv(template: tuple[str, ...], spec: TargetSpec, iteration: int) -> list[str]:
    """Fill `{target}`, `{state_root}` and `{iteration}` into each argv element.

    `str.format` rules (as config validation checks them): `{{`/`}}` are literal braces, and
    substituted values are never parsed again, so a path with braces or quotes stays inert
    and can never become two arguments or reach a shell.
    """
    values = {
        "target": str(spec.path),
        "state_root": str(spec.state_root),
        "iteration": str(iteration),
    }
    return [part.format_map(values) for part in template]


MAX_SOURCES = 500


def expand_sources(target: Path, patterns: tuple[str, ...]) -> list[str]:
    """The regular files matching `patterns` (globs relative to `target`; `~` is the home
    directory), sorted per pattern, each once, at most MAX_SOURCES. Blocking."""
    found: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        expanded = Path(pattern).expanduser()
        base, rel = (
            (Path(expanded.anchor), str(expanded.relative_to(expanded.anchor)))
            if (expanded.is_absolute())
            else (target, pattern)
        )
        try:
            matches = sorted(base.glob(rel))
        except (OSError, ValueError, NotImplementedError):
            continue
        for match in matches:
            text = str(match)
            if text in seen or not match.is_file():
                continue
            seen.add(text)
            found.append(text)
            if len(found) >= MAX_SOURCES:
                return found
    return found


def _handoff_sources(handoff: Path, spec: TargetSpec) -> list[str]:
    """The handoff (if it still exists) and the feedback sources passed with it: `sources`,
    or by default what the orchestrator would have discovered itself. Blocking."""
    if not handoff.is_file():
        return []
    if spec.sources is None:
        return [str(handoff), *feedback.discover_now(spec.path, spec.state_root)]
    return [str(handoff), *expand_sources(spec.path, spec.sources)]


def argv_and_log(
    spec: TargetSpec, iteration: int, handoff: Path | None, log_path: Path
) -> tuple[list[str] | None, int | None]:
    """`argv_for`, then (when the target directory exists) the run log opened
    (`open_run_log`; RunLogError). Blocking."""
    argv = argv_for(spec, iteration, handoff)
    return (None, None) if argv is None else (argv, open_run_log(log_path))


def argv_for(spec: TargetSpec, iteration: int, handoff: Path | None) -> list[str] | None:
    """The orchestrator's argv with the handoff and feedback sources; None when the target
    directory is gone. Blocking (it looks at the disk)."""
    if not spec.path.is_dir():
        return None
    argv = render_argv(spec.orchestrator, spec, iteration)
    if handoff is not None and spec.handoff_arg:
        for source in _handoff_sources(handoff, spec):
            argv += [spec.handoff_arg, source]
    return argv
