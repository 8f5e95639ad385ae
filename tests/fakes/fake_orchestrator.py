#!/usr/bin/env python3
"""A fake orchestrator for tests: one script, its behaviour chosen with `--behaviour NAME`.

Run it with `sys.executable`. It accepts the real orchestrator's arguments (`--target`,
`--state-root`, `--iteration`, `--source FILE`, `--auto`) and ignores any it does not know.
The behaviour may also come from the environment (`FAKE_BEHAVIOUR`), so a daemon config can
choose it per target with `env = { FAKE_BEHAVIOUR = "reject" }`. See README.md for the table.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BEHAVIOURS = (
    "keep",
    "reject",
    "sequence",
    "summary",
    "crash",
    "signal",
    "hang",
    "trap-term",
    "grandchild",
    "garbage",
    "silent",
    "megabytes",
    "invalid-utf8",
    "bad-json",
    "learner",
    "bad-learner",
    "delete-target",
    "slow",
    "probe",
    "daemonize",
    "daemonize-hang",
    "progress-cost",
    "hold",
    "rate-limit",
    "linger",
)
# What a Python 3.11 orchestrator prints when the model API refuses it: a chained traceback
# (frames, carets, the "During handling" line), the error, then a blank line.
RATE_LIMIT_TRACEBACK = """Traceback (most recent call last):
  File "/opt/orchestrator/generate.py", line 88, in call_model
    response = client.chat.completions.create(**request)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
httpx.HTTPStatusError: Client error '429 Too Many Requests'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/opt/orchestrator/orchestrate.py", line 412, in <module>
    main()
  File "/opt/orchestrator/orchestrate.py", line 398, in main
    raise openai.RateLimitError(message)
openai.RateLimitError: Error code: 429 - Rate limit reached for gpt-4o \x1b[31min\x1b[0m org-x

"""
BAD_FIELDS = ("weighted_score", "cost_usd", "nan", "score", "attempts", "decision", "scores")
PROBE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "AUTOLOOPD_RUN")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument(
        "--behaviour", "--behavior", default=os.environ.get("FAKE_BEHAVIOUR", "keep")
    )
    parser.add_argument("--target", default=None)
    parser.add_argument("--state-root", default=None)
    parser.add_argument("--iteration", type=int, default=int(os.environ.get("FAKE_ITERATION", "1")))
    parser.add_argument("--source", action="append", default=[])
    parser.add_argument("--decisions", default=os.environ.get("FAKE_DECISIONS"))
    parser.add_argument("--scores", default=os.environ.get("FAKE_SCORES"))
    parser.add_argument("--dims", default="accuracy,coverage")
    parser.add_argument("--cost", type=float, default=float(os.environ.get("FAKE_COST", "0.15")))
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--no-scores", action="store_true")
    parser.add_argument("--no-weighted", action="store_true")
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--signal", default="KILL")
    parser.add_argument("--sleep", type=float, default=None)
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--stderr-mb", type=float, default=0.0)
    parser.add_argument("--bytes", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-field", choices=BAD_FIELDS, default="weighted_score")
    parser.add_argument("--stderr", default=None, help="extra text written to stderr first")
    parser.add_argument("--pid-file", default=os.environ.get("FAKE_PID_FILE"))
    parser.add_argument("--ready-file", default=None)
    parser.add_argument("--grandchild-pid-file", default=None)
    parser.add_argument("--grandchild-setsid", action="store_true")
    parser.add_argument("--record", default=os.environ.get("FAKE_RECORD"))
    parser.add_argument("--probe-env", action="append", default=[])
    parser.add_argument("--candidate-id", default=None)
    parser.add_argument("--artifact-path", default=None)
    parser.add_argument("--daemon-pid-file", default=None)
    parser.add_argument("--daemon-sleep", type=float, default=3600.0)
    parser.add_argument("--daemon-trap-term", action="store_true")
    parser.add_argument("--scrub-env", action="store_true")
    parser.add_argument("--plant", action="append", default=[])
    parser.add_argument("--progress-step", type=float, default=0.1, help="USD per progress line")
    parser.add_argument("--progress-interval", type=float, default=0.1)
    parser.add_argument("--progress-lines", type=int, default=50)
    parser.add_argument(
        "--hold-edits",
        action="store_true",
        help="hold: the held-back candidate's edit is in the target (as a keep's would be)",
    )
    parser.add_argument(
        "--no-change",
        action="store_true",
        help="keep without editing the target (by default a keep edits a file in it)",
    )
    args, _unknown = parser.parse_known_args(argv)
    if args.behaviour not in BEHAVIOURS:
        parser.error(f"unknown behaviour {args.behaviour!r}; one of {', '.join(BEHAVIOURS)}")
    return args


def write_atomic(path: str, text: str) -> None:
    """Write `text` so that a reader never sees a partial file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def pick(values: list[str], iteration: int, *, cycle: bool) -> str:
    """The value for `iteration` (1-based): cycled, or the last one repeated."""
    index = max(iteration - 1, 0)
    return values[index % len(values)] if cycle else values[min(index, len(values) - 1)]


def decision_for(args: argparse.Namespace) -> str:
    default = {"reject": "reject", "hold": "pending_promote"}.get(args.behaviour, "keep")
    if args.decisions:
        return pick(args.decisions.split(","), args.iteration, cycle=True).strip()
    if args.behaviour == "sequence":
        sys.exit("fake_orchestrator: --behaviour sequence needs --decisions")
    return default


def score_for(args: argparse.Namespace) -> float:
    if args.scores:
        return float(pick(args.scores.split(","), args.iteration, cycle=False))
    return 0.72


def scores_dict(args: argparse.Namespace) -> dict[str, float]:
    score = score_for(args)
    return {dim.strip(): score for dim in args.dims.split(",") if dim.strip()}


def result(args: argparse.Namespace, *, with_scores: bool = True) -> dict[str, Any]:
    state_root = args.state_root or "."
    artifact = f"{state_root}/receipts/gate-{args.iteration:04d}.json"
    out: dict[str, Any] = {
        "decision": decision_for(args),
        "candidate_id": args.candidate_id or f"cand-{args.iteration:02d}",
        "artifact_path": args.artifact_path or artifact,
        "attempts": 1,
    }
    if with_scores and not args.no_scores:
        out["scores"] = scores_dict(args)
        if not args.no_weighted:
            out["weighted_score"] = score_for(args)
    if not args.no_cost:
        out["cost_usd"] = args.cost
    return out


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def progress(args: argparse.Namespace) -> None:
    print(f"fake-orchestrator: {args.behaviour} iteration={args.iteration} target={args.target}")
    for source in args.source:
        print(f"fake-orchestrator: handoff {source}")
    sys.stdout.flush()


def sleep_forever(seconds: float | None) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.5 if deadline is None else min(0.5, max(deadline - time.monotonic(), 0)))


def write_learner(args: argparse.Namespace, text: str) -> None:
    learner = Path(args.state_root or ".") / "learner"
    learner.mkdir(parents=True, exist_ok=True)
    (learner / f"iteration-{args.iteration}.json").write_text(text, encoding="utf-8")


def hold(args: argparse.Namespace) -> None:
    """The improvement-gate's pending_promote: append an entry in the upstream shape to
    <state_root>/state/pending_promote.json, rewriting the file in place as upstream does."""
    state = Path(args.state_root or ".") / "state"
    state.mkdir(parents=True, exist_ok=True)
    path = state / "pending_promote.json"
    payload = json.loads(path.read_text()) if path.exists() else {"pending": []}
    candidate = args.candidate_id or f"cand-{args.iteration:02d}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_id = f"generic-skill-{Path(args.target or 'skill').name}-{args.iteration:04d}"
    payload.setdefault("pending", []).append(
        {
            "run_id": run_id,
            "candidate_id": candidate,
            "category": "prompt",
            "target_path": args.target,
            "recommendation": "hold",
            "receipt_path": f"{state.parent}/receipts/gate-{run_id}-{candidate}.json",
            "created_at": stamp,
            "human_review_request": {
                "request_id": f"review-{candidate}",
                "candidate_id": candidate,
                "category": "prompt",
                "risk_level": "medium",
                "title": f"Tighten the prompt ({candidate})",
                "status": "pending",
                "requested_at": stamp,
            },
        }
    )
    payload["last_updated"] = stamp
    path.write_text(json.dumps(payload, indent=2))


def daemonize(args: argparse.Namespace) -> int:
    """Start a sleeper the classic daemon way: fork, setsid, fork again, stdio on /dev/null.

    With --scrub-env it is exec'd with only PATH in its environment (no AUTOLOOPD_RUN). Its
    pid is appended to --daemon-pid-file; returns it.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                trap = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " * args.daemon_trap_term
                code = f"import signal, time; {trap}time.sleep({args.daemon_sleep!r})"
                env = {"PATH": os.environ.get("PATH", "")} if args.scrub_env else dict(os.environ)
                os.execve(sys.executable, [sys.executable, "-c", code], env)
            os.write(write_end, f"{grandchild}\n".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        pid = int(pipe.read().strip())
    os.waitpid(child, 0)
    if args.daemon_pid_file:
        with open(args.daemon_pid_file, "a", encoding="utf-8") as handle:
            handle.write(f"{pid}\n")
    return pid


def plant(args: argparse.Namespace) -> None:
    """--plant KIND:PATH (PATH relative to --state-root): put a fifo, dir or socket there."""
    for item in args.plant:
        kind, _, rel = item.partition(":")
        path = Path(args.state_root or ".") / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "socket":
            import socket

            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sock.close()
        else:
            sys.exit(f"fake_orchestrator: --plant: unknown kind {kind!r}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.pid_file:
        write_atomic(args.pid_file, str(os.getpid()))
    if args.record:
        record = {
            "pid": os.getpid(),
            "behaviour": args.behaviour,
            "iteration": args.iteration,
            "target": args.target,
            "state_root": args.state_root,
            "source": args.source,
            "argv": argv,
            "marker": os.environ.get("AUTOLOOPD_RUN"),
            "fds": sorted(int(n) for n in os.listdir("/proc/self/fd")),
        }
        with open(args.record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    if args.stderr:
        sys.stderr.write(args.stderr + "\n")
        sys.stderr.flush()
    behaviour = args.behaviour
    plant(args)

    if behaviour == "trap-term":

        def ignore(signum: int, frame: object) -> None:
            sys.stderr.write("fake-orchestrator: ignoring SIGTERM\n")
            sys.stderr.flush()

        signal.signal(signal.SIGTERM, ignore)

    if args.ready_file:
        write_atomic(args.ready_file, str(os.getpid()))

    if behaviour in ("keep", "reject", "sequence"):
        progress(args)
        obj = result(args)
        if obj["decision"] == "keep" and args.target and not args.no_change:
            # What a real keep does: the target's files change.
            with open(os.path.join(args.target, "fake-kept.txt"), "a", encoding="utf-8") as out:
                out.write(f"iteration {args.iteration}\n")
        emit(obj)
    elif behaviour == "summary":
        progress(args)
        state_root = args.state_root or "."
        print("Pipeline Summary:")
        print(f"  Target: {args.target}")
        print("  Attempts: 1/3")
        print(f"  Final Decision: {decision_for(args)}")
        print(f"  Candidate: cand-{args.iteration:02d}-skill")
        print(f"  Artifact: {state_root}/receipts/gate-{args.iteration:04d}.json")
    elif behaviour == "hold":
        progress(args)
        obj = result(args)
        if obj["decision"] == "pending_promote":
            hold(args)
        if args.target and (obj["decision"] == "keep" or args.hold_edits):
            with open(os.path.join(args.target, "fake-kept.txt"), "a", encoding="utf-8") as out:
                out.write(f"iteration {args.iteration}\n")
        emit(obj)
    elif behaviour == "linger":
        progress(args)
        emit(result(args))
        sleep_forever(args.sleep)  # its result printed, it has not exited yet
    elif behaviour == "crash":
        progress(args)
        sys.stderr.write("Traceback (most recent call last):\n  (fake)\nPipeline error: boom\n")
        return 3 if args.exit_code is None else args.exit_code
    elif behaviour == "rate-limit":
        progress(args)
        sys.stderr.write(RATE_LIMIT_TRACEBACK)
        return 3 if args.exit_code is None else args.exit_code
    elif behaviour == "signal":
        progress(args)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), getattr(signal, f"SIG{args.signal.upper().removeprefix('SIG')}"))
        sleep_forever(None)  # in case the signal is caught or ignored
    elif behaviour in ("hang", "trap-term"):
        progress(args)
        sleep_forever(args.sleep)
    elif behaviour == "daemonize":
        progress(args)
        daemonize(args)
        emit(result(args))
    elif behaviour == "daemonize-hang":
        progress(args)
        daemonize(args)
        sleep_forever(args.sleep)
    elif behaviour == "grandchild":
        progress(args)
        seconds = 3600.0 if args.sleep is None else args.sleep
        child = subprocess.Popen(  # inherits stdout/stderr: our pipes stay open
            [sys.executable, "-c", f"import time; time.sleep({seconds!r})"],
            start_new_session=args.grandchild_setsid,  # escapes the process group
        )
        if args.grandchild_pid_file:
            write_atomic(args.grandchild_pid_file, str(child.pid))
        emit(result(args))
        child.returncode = 0  # do not warn about it still running: that is the point
    elif behaviour == "garbage":
        data = random.Random(args.seed).randbytes(args.bytes)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    elif behaviour == "silent":
        pass
    elif behaviour == "megabytes":
        line = b"x" * 1023 + b"\n"
        block = line * 1024  # 1 MiB
        for stream, megabytes in (
            (sys.stderr.buffer, args.stderr_mb),
            (sys.stdout.buffer, args.mb),
        ):
            whole = int(megabytes)
            for _ in range(whole):
                stream.write(block)
            stream.write(block[: int((megabytes - whole) * len(block))])
            stream.flush()
        emit(result(args))
    elif behaviour == "invalid-utf8":
        sys.stdout.buffer.write(b"\xff\xfe invalid utf-8 \xc3\x28 here\n")
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(b"stderr too: \xff\xfe\n")
        sys.stderr.buffer.flush()
        emit(result(args))
    elif behaviour == "bad-json":
        obj = result(args)
        obj.setdefault("scores", {"accuracy": 0.5})
        if args.bad_field == "weighted_score":
            obj["weighted_score"] = "high"
        elif args.bad_field == "cost_usd":
            obj["cost_usd"] = -1.0
        elif args.bad_field == "nan":
            obj["weighted_score"] = float("nan")
        elif args.bad_field == "score":
            obj["scores"] = {"accuracy": 1.5}
        elif args.bad_field == "attempts":
            obj["attempts"] = "two"
        elif args.bad_field == "decision":
            obj["decision"] = "maybe"
        elif args.bad_field == "scores":
            obj["scores"] = [0.5]
        emit(obj)
    elif behaviour == "learner":
        write_learner(args, json.dumps({"final_scores": scores_dict(args)}))
        progress(args)
        emit(result(args, with_scores=False))
    elif behaviour == "bad-learner":
        write_learner(args, "this is { not JSON\n")
        progress(args)
        emit(result(args, with_scores=False))
    elif behaviour == "delete-target":
        progress(args)
        if args.target:
            shutil.rmtree(args.target, ignore_errors=True)
        emit(result(args))
    elif behaviour == "progress-cost":
        # Live cost as it accrues: {"cost_usd": so far} lines, then the result.
        for k in range(1, args.progress_lines + 1):
            time.sleep(args.progress_interval)
            emit({"cost_usd": round(k * args.progress_step, 6), "phase": "working"})
        emit(result(args))
    elif behaviour == "slow":
        progress(args)
        sleep_forever(1.0 if args.sleep is None else args.sleep)
        emit(result(args))
    elif behaviour == "probe":
        try:
            stdin_target = os.readlink("/proc/self/fd/0")
        except OSError as exc:
            stdin_target = f"error: {exc}"
        obj = result(args)
        obj["probe"] = {
            "pid": os.getpid(),
            "pgid": os.getpgrp(),
            "sid": os.getsid(0),
            "cwd": os.getcwd(),
            "stdin": stdin_target,
            "stdin_data": sys.stdin.read(),
            "env": {name: os.environ.get(name) for name in (*PROBE_ENV, *args.probe_env)},
        }
        emit(obj)
    if args.exit_code is not None:
        return int(args.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
