#!/usr/bin/env python3
"""A fake that behaves as the real improvement-orchestrator does at its edges (written from
its documented behaviour, not from its code).

- Arguments: `--target`, `--state-root`, `--source FILE` (repeatable), `--max-retries`,
  `--auto`, `--task-suite`, `--eval-mock`; no `--iteration` (it counts its own runs in
  `<state_root>/upstream-fake-runs`).
- Without any `--source` it discovers feedback itself: the session-feedback stores under
  `$HOME/.claude/skills/session-feedback-analyzer/feedback-store/` filtered to the last 30
  days (into `feedback-recent.jsonl` / `muse-feedback-recent.jsonl` beside them), the
  skill's `.improvement-memory/*.json`, and its `.feedback`, `learnings` and `memory`
  directories; with a `--source` it discovers nothing.
- Its executor edits the target (appends to `SKILL.md`) in the runs listed in
  `FAKE_EDIT_RUNS` (comma-separated, default "1"); the gate's decision comes from
  `FAKE_DECISIONS` (cycled, default keep), the learner's scores from `FAKE_SCORES` (the
  last one repeats) into `<state_root>/learner/run-N.json`.
- Prints no JSON: only its text `Pipeline Summary:` block, as the real one.
- `FAKE_RECORD`: one JSON line per run with the run number, the sources it was given and
  the sources it used.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

STORE = Path(".claude/skills/session-feedback-analyzer/feedback-store")


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--target", required=True)
    parser.add_argument("--state-root", required=True)
    parser.add_argument("--source", action="append", default=[])
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--auto", action="store_true")
    parser.add_argument("--task-suite")
    parser.add_argument("--eval-mock", action="store_true")
    return parser.parse_args(argv)


def _recent(store: Path, days: int = 30) -> Path | None:
    """The lines of `store` from the last `days` days (or undated) in a `-recent` file."""
    if not store.is_file():
        return None
    cutoff = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    kept = []
    for line in store.read_text(encoding="utf-8").splitlines():
        try:
            stamp = json.loads(line).get("timestamp", "")
        except ValueError:
            continue
        if not stamp or stamp >= cutoff:
            kept.append(line)
    if not kept:
        return None
    out = store.with_name(store.stem + "-recent.jsonl")
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def _discover(target: Path) -> list[str]:
    found = []
    for name in ("feedback.jsonl", "muse-feedback.jsonl"):
        recent = _recent(Path.home() / STORE / name)
        if recent is not None:
            found.append(str(recent))
    memory = target / ".improvement-memory"
    if memory.is_dir():
        found += [str(p) for p in sorted(memory.glob("*.json"))]
    found += [
        str(target / d) for d in (".feedback", "learnings", "memory") if (target / d).exists()
    ]
    return found


def _pick(values: str | None, run: int, default: str, *, cycle: bool) -> str:
    items = [v.strip() for v in (values or default).split(",") if v.strip()]
    index = run - 1
    return items[index % len(items)] if cycle else items[min(index, len(items) - 1)]


def main(argv: list[str]) -> int:
    """One pipeline run."""
    args = _args(argv)
    target, state_root = Path(args.target).resolve(), Path(args.state_root).resolve()
    state_root.mkdir(parents=True, exist_ok=True)
    counter = state_root / "upstream-fake-runs"
    run = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(run))
    sources = [str(Path(s).expanduser().resolve()) for s in args.source if s]
    used = sources or _discover(target)
    if not sources and used:
        print(f"  Auto-discovered {len(used)} feedback source(s)")
    edits = {int(n) for n in os.environ.get("FAKE_EDIT_RUNS", "1").split(",") if n.strip()}
    if run in edits:
        with (target / "SKILL.md").open("a", encoding="utf-8") as skill:
            skill.write(f"\n<!-- candidate of run {run} -->\n")
    decision = _pick(os.environ.get("FAKE_DECISIONS"), run, "keep", cycle=True)
    score = float(_pick(os.environ.get("FAKE_SCORES"), run, "0.6", cycle=False))
    learner = state_root / "learner"
    learner.mkdir(exist_ok=True)
    scores = {"accuracy": score, "coverage": score}
    (learner / f"run-{run}.json").write_text(json.dumps({"final_scores": scores}))
    if os.environ.get("FAKE_RECORD"):
        with open(os.environ["FAKE_RECORD"], "a", encoding="utf-8") as record:
            record.write(json.dumps({"run": run, "given": sources, "used": used}) + "\n")
    print("\nPipeline Summary:")
    print(f"  Target: {target}")
    print(f"  Attempts: 1/{args.max_retries}")
    print(f"  Final Decision: {decision}")
    print(f"  Candidate: cand-{run:02d}")
    print(f"  Artifact: {state_root}/receipts/gate-{run:04d}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
