"""A target's review queue as the orchestrator's gate writes it, for tests: an entry in the
upstream `pending_promote.json` shape, and the file written where the daemon reads it
(`storage/files/review_files.pending_path`)."""

from __future__ import annotations

from pathlib import Path

from autoloop_daemon.storage.files.review_files import pending_path


def upstream_entry(candidate: str, run: str = "run-1", **extra: object) -> dict[str, object]:
    """One held-back candidate as the upstream gate appends it; `extra` overrides keys."""
    entry: dict[str, object] = {
        "run_id": run,
        "candidate_id": candidate,
        "category": "prompt",
        "target_path": "/skills/x",
        "recommendation": "hold",
        "receipt_path": f"/state/receipts/gate-{run}-{candidate}.json",
        "created_at": "2026-12-05T11:00:00Z",
        "human_review_request": {
            "request_id": f"review-{candidate}",
            "risk_level": "high",
            "title": "Rewrite the prompt",
        },
    }
    entry.update(extra)
    return entry


def write_pending(state_root: Path, data: bytes | str) -> Path:
    """Write `data` as `state_root`'s queue file (its directory made if missing); its path."""
    path = pending_path(state_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path
