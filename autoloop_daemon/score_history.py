"""A target's `score_history` as a runner keeps it: the items' JSON text, held once.

A daemon keeps a target's newest 50 items for as long as it runs. Held as dicts with their
scores, an item took ~0.6 kB with one dimension and ~1.1 kB with six; as one `ScoreItem`
each (its text, its iteration, the object), 0.33 and 0.45 kB (`bench/history_items.py`):
16.5 MB at 1,000 targets of one dimension once every target had run 50 iterations.
`ScoreHistory` holds a target's items as one string, the way the state file lays them out,
with each item's end in an array: the text and ~10 bytes an item.

A checkpoint writes that string as it is (`storage/files/state_file.encode_state`); reading
an item makes a `ScoreItem`, a mapping with the file's keys over the item's text.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

from autoloop_daemon.json_text import LIST_ITEM_SEPARATOR, compact


def item_text(
    iteration: int,
    weighted_score: float | None,
    decision: str | None,
    scores: Mapping[str, float] | None,
    timestamp: str | None,
    reported_score: float | None = None,  # a keep that changed no file (policy/progress.py)
) -> str:
    """The compact JSON text of the file's item of these fields (ValueError for a NaN or
    infinite number); `reported_score` only when set."""
    data: dict[str, Any] = {
        "iteration": iteration,
        "weighted_score": weighted_score,
        "decision": decision,
        "scores": scores,
        "timestamp": timestamp,
    }
    if reported_score is not None:
        data["reported_score"] = reported_score
    return compact(data)


class ScoreItem(Mapping[str, Any]):
    """One `score_history` item: read as the file's object (a mapping with the same keys,
    `reported_score` only when set) over its JSON text. Its iteration is kept beside the
    text; every other field is read from the text."""

    __slots__ = ("iteration", "text")

    def __init__(
        self,
        iteration: int,
        weighted_score: float | None,
        decision: str | None,
        scores: Mapping[str, float] | None,
        timestamp: str | None,
        reported_score: float | None = None,
    ) -> None:
        """The item of these fields (ValueError when a number is NaN or infinite)."""
        self.iteration = iteration
        self.text = item_text(iteration, weighted_score, decision, scores, timestamp,
                              reported_score)  # fmt: skip

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> ScoreItem:
        """The item of the file's object `data` (KeyError when a key is missing)."""
        return cls(
            data["iteration"],
            data["weighted_score"],
            data["decision"],
            data["scores"],
            data["timestamp"],
            data.get("reported_score"),
        )

    @classmethod
    def _over(cls, text: str) -> ScoreItem:
        """The item whose text `text` already is (an object with an integer iteration)."""
        item = cls.__new__(cls)
        item.iteration, item.text = json.loads(text)["iteration"], text
        return item

    def __getitem__(self, key: str) -> Any:
        """The value of the file's key `key` (the iteration without decoding the text)."""
        if key == "iteration":
            return self.iteration
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        """The file's keys, in its order."""
        return iter(self.to_json())

    def __len__(self) -> int:
        """How many keys the file's object has."""
        return len(self.to_json())

    def __eq__(self, other: object) -> bool:
        """Equal to a mapping with the same keys and values (another item included)."""
        return isinstance(other, Mapping) and self.to_json() == dict(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        """The item and its file's object."""
        return f"ScoreItem({self.text})"

    def to_json(self) -> dict[str, Any]:
        """The file's object (a new dict)."""
        data: dict[str, Any] = json.loads(self.text)
        return data


class ScoreHistory(Sequence[ScoreItem]):
    """A target's newest score_history items, oldest first, as one text (immutable).

    `text` is the items' compact JSON joined by `LIST_ITEM_SEPARATOR` (compact JSON holds no
    raw newline, so no item holds the separator); `appended` makes the next history.
    Indexing gives `ScoreItem`s; equal to a sequence of equal mappings.
    """

    __slots__ = ("_ends", "last_iteration", "text")

    def __init__(self, items: Iterable[tuple[int, str]] = ()) -> None:
        """The history of these (iteration, item text) pairs, oldest first."""
        texts = []
        self.last_iteration: int | None = None  # the newest item's (read on every run)
        for iteration, text in items:
            self.last_iteration = iteration
            texts.append(text)
        self.text = LIST_ITEM_SEPARATOR.join(texts)
        self._ends = array("I")
        end = -len(LIST_ITEM_SEPARATOR)
        for text in texts:
            end += len(LIST_ITEM_SEPARATOR) + len(text)
            self._ends.append(end)

    @classmethod
    def of(cls, data: Iterable[Mapping[str, Any]]) -> ScoreHistory:
        """The history of the file's item objects (KeyError when one misses a key)."""
        return cls((item["iteration"], ScoreItem.of(item).text) for item in data)

    @classmethod
    def of_file(cls, items: Sequence[Mapping[str, Any]]) -> ScoreHistory | None:
        """The history of a state file's item objects as they are, any key kept (None
        when an item's iteration is not an integer: the caller keeps the list)."""
        pairs = []
        for item in items:
            iteration = item.get("iteration")
            if type(iteration) is not int:
                return None
            pairs.append((iteration, compact(item)))
        return cls(pairs)

    def appended(self, new: Sequence[tuple[int, str]], limit: int) -> ScoreHistory:
        """This history and the (iteration, text) pairs `new` after it: the newest `limit`.
        The kept items' text is sliced once, not item by item (a run appends one)."""
        drop = max(len(self) + len(new) - limit, 0)
        if drop >= len(self):
            return ScoreHistory(new[drop - len(self) :])
        cut = self._start(drop)
        ends = array("I", (end - cut for end in self._ends[drop:]))
        texts = [self.text[cut:]]
        for _, text in new:
            ends.append(ends[-1] + len(LIST_ITEM_SEPARATOR) + len(text))
            texts.append(text)
        history = ScoreHistory.__new__(ScoreHistory)
        history.text = LIST_ITEM_SEPARATOR.join(texts)
        history.last_iteration = new[-1][0] if new else self.last_iteration
        history._ends = ends
        return history

    def _start(self, i: int) -> int:
        """Where item `i` begins in `text`."""
        return self._ends[i - 1] + len(LIST_ITEM_SEPARATOR) if i else 0

    def _text_of(self, i: int) -> str:
        return self.text[self._start(i) : self._ends[i]]

    def __len__(self) -> int:
        """How many items."""
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> ScoreItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[ScoreItem]: ...

    def __getitem__(self, index: int | slice) -> ScoreItem | list[ScoreItem]:
        """The item at `index` (a list of them for a slice)."""
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]  # IndexError when out of range, negatives counted back
        return ScoreItem._over(self._text_of(i))

    def __eq__(self, other: object) -> bool:
        """Equal to a sequence of mappings equal to its items (another history included)."""
        if isinstance(other, ScoreHistory):
            return self.text == other.text
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(other) == len(self) and self.to_json() == [dict(item) for item in other]

    __hash__ = None  # type: ignore[assignment]

    def __copy__(self) -> ScoreHistory:
        """Itself: a history never changes."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ScoreHistory:
        """Itself: a history never changes."""
        return self

    def __repr__(self) -> str:
        """The history and its items' text."""
        return f"ScoreHistory([{self.text}])"

    def to_json(self) -> list[dict[str, Any]]:
        """The file's item objects (new dicts), decoded at once."""
        data: list[dict[str, Any]] = json.loads("[" + self.text + "]")
        return data


EMPTY_HISTORY = ScoreHistory()
