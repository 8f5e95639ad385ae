"""What a decision word means to the loop: a keep, a rejection, or neither. Pure.

The one place that sorts the orchestrator's words. Only keep against reject/revert is an
alternation (the original script's oscillation); `pending_promote` (the real gate's word for
any candidate it cannot keep by itself), `pending`, `no_candidates`,
`no_accepted_candidates` and unknown words are neutral: they neither keep nor reject.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from autoloop_daemon.vocab import Decision

REJECT_WORDS: frozenset[str] = frozenset({Decision.REJECT, Decision.REVERT})


class DecisionKind(IntEnum):
    """A decision's meaning; the value is the byte a progress checkpoint stores."""

    REJECT = 0
    KEEP = 1
    NEUTRAL = 2


def decision_kind(decision: str | None) -> DecisionKind:
    """Whether `decision` kept the candidate, rejected it, or neither (None: neither)."""
    if decision == Decision.KEEP:
        return DecisionKind.KEEP
    if decision in REJECT_WORDS:
        return DecisionKind.REJECT
    return DecisionKind.NEUTRAL


def is_rejection(decision: str | None) -> bool:
    """True for the words that turn a candidate down (`reject`, `revert`)."""
    return decision_kind(decision) is DecisionKind.REJECT


def alternates(kinds: Sequence[DecisionKind]) -> bool:
    """True when `kinds` (two or more) alternate keep / reject with no neutral word among them."""
    if len(kinds) < 2 or DecisionKind.NEUTRAL in kinds:
        return False
    return all(kinds[i] != kinds[i + 1] for i in range(len(kinds) - 1))
