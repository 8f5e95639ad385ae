"""The `[[alerts]]` entries of the configuration: which events to report, and how.

    [[alerts]]
    events = ["budget_threshold", "target_stopped", "circuit_breaker", "daemon_stopping"]
    command = ["/usr/local/bin/page-me", "--quiet"]   # the event JSON on stdin, no shell
    url = "https://hooks.example.com/autoloopd"        # the event JSON POSTed
    timeout_seconds = 10
    retries = 3
    budget_fractions = [0.5, 0.8, 1.0]

Each entry needs `command` or `url` (or both). Validation is as strict as the rest of the
file (unknown keys, wrong types and bad values are one-line errors naming the key).
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

AlertEvent = Literal[
    "budget_threshold",
    "target_stopped",
    "circuit_breaker",
    "daemon_stopping",
    "review_requested",
    "review_expired",
]
DEFAULT_FRACTIONS: tuple[float, ...] = (0.5, 0.8, 1.0)


def _check_arg(arg: str) -> str:
    if "\0" in arg:
        raise ValueError("contains a NUL byte")
    return arg


def _check_command(argv: list[str]) -> list[str]:
    if not argv or not argv[0]:
        raise ValueError("the program must not be empty (leave command out to use only url)")
    return argv


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if any(c.isspace() for c in url):
        raise ValueError(f"{url!r} contains whitespace")
    return url


def check_fractions(fractions: list[float]) -> list[float]:
    """Fractions of a cap, each once, in ascending order."""
    if len(set(fractions)) != len(fractions):
        raise ValueError("a fraction appears twice")
    return sorted(fractions)


class AlertSettings(BaseModel):
    """One `[[alerts]]` entry."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    events: Annotated[list[AlertEvent], Field(min_length=1)]
    command: (
        Annotated[list[Annotated[str, AfterValidator(_check_arg)]], AfterValidator(_check_command)]
        | None
    ) = None
    url: Annotated[str, AfterValidator(_check_url)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    budget_fractions: Annotated[
        list[Annotated[float, Field(gt=0, le=10)]],
        Field(min_length=1),
        AfterValidator(check_fractions),
    ] = list(DEFAULT_FRACTIONS)

    @model_validator(mode="after")
    def _needs_a_channel(self) -> AlertSettings:
        if self.command is None and self.url is None:
            raise ValueError('give command = ["program", ...] or url = "https://..." (or both)')
        return self
