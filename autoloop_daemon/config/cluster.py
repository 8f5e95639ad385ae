"""The `[cluster]` table: several hosts sharing one budget and one set of targets.

    [cluster]
    dsn = "postgresql://autoloopd@db.example/autoloopd"   # or AUTOLOOPD_CLUSTER__DSN
    host_id = "build-3"        # default: the host name
    lease_seconds = 60         # a dead host's targets move after this
    renew_seconds = 10         # how often a host renews its leases
    reservation_retention_days = 7   # settled reservations' rows are pruned after this

Without `dsn` (the default) the daemon runs alone on its files, as ever. Leases are only
safe when a host renews well before they expire, so `renew_seconds` must be at most a third
of `lease_seconds` (the design's margin for a slow database and the self-fencing grace).
"""

from __future__ import annotations

import socket
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _check_dsn(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")) and "=" not in value:
        raise ValueError("must be a PostgreSQL URL (postgresql://...) or key=value string")
    return value


def _check_host_id(value: str) -> str:
    if not value or len(value) > 200 or not value.isprintable():
        raise ValueError("must be 1 to 200 printable characters")
    return value


class ClusterSettings(BaseModel):
    """`[cluster]` (see the module docstring)."""

    model_config = _STRICT

    dsn: Annotated[str, AfterValidator(_check_dsn)] | None = None
    host_id: Annotated[str, AfterValidator(_check_host_id)] | None = None
    lease_seconds: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    renew_seconds: Annotated[float, Field(gt=0, le=28_800)] = 10.0
    reservation_retention_days: Annotated[float, Field(gt=0, le=36_500)] = 7.0

    @model_validator(mode="after")
    def _renew_well_before_expiry(self) -> ClusterSettings:
        if self.renew_seconds * 3 > self.lease_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds:g}) must be at most a third of "
                f"lease_seconds ({self.lease_seconds:g})"
            )
        return self

    @property
    def enabled(self) -> bool:
        """True when a database is configured."""
        return self.dsn is not None

    @property
    def host(self) -> str:
        """This host's id in the cluster (`host_id`, else the host name)."""
        return self.host_id or socket.gethostname()
