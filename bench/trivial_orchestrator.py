"""The most trivial orchestrator: print one JSON result line and exit 0.

Every argument (`--target`, `--state-root`, `--source FILE`, ...) is ignored. Standard library
only, and as little of it as possible, so that the run costs the interpreter's start-up and
nothing else.
"""

import sys

RESULT = '{"decision":"keep","scores":{"a":0.5},"cost_usd":0.0001}'

if __name__ == "__main__":
    sys.stdout.write(RESULT + "\n")
