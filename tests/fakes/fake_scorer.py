#!/usr/bin/env python3
"""A fake improvement-learner scorer: prints `{"final_scores": {...}}` JSON on stdout.

Accepts (and ignores) the real scorer's `--skill-path T --max-iterations 1 --mock`.
See README.md for the flags. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def parse_scores(text: str) -> dict[str, float]:
    scores: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        scores[name.strip()] = float(value)
    return scores


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument(
        "--scores", default=os.environ.get("FAKE_SCORER_SCORES", "accuracy=0.8,coverage=0.7")
    )
    parser.add_argument(
        "--format", choices=("final_scores", "dimensions", "nested"), default="final_scores"
    )
    parser.add_argument("--pretty", action="store_true", help="indented, multi-line JSON")
    parser.add_argument("--noise", action="store_true", help="log lines before the JSON")
    parser.add_argument("--garbage", action="store_true", help="print no JSON at all")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--pid-file", default=None)
    args, _unknown = parser.parse_known_args(argv)
    if args.pid_file:
        with open(args.pid_file, "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
    if args.sleep:
        time.sleep(args.sleep)
    if args.noise:
        print("Loading skill...")
        print("Scoring 2 dimensions (mock)")
    if args.garbage:
        print("scorer: something went wrong, no scores")
        return int(args.exit_code)
    scores = parse_scores(args.scores)
    doc: dict[str, Any]
    if args.format == "final_scores":
        doc = {"final_scores": scores, "iterations": 1}
    elif args.format == "dimensions":
        doc = {"dimensions": scores}
    else:
        doc = {
            "final_scores": {
                name: {"score": value, "notes": "mock"} for name, value in scores.items()
            }
        }
    print(json.dumps(doc, indent=2 if args.pretty else None))
    return int(args.exit_code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
