"""GET /usage: the period a caller asked for, checked, and its sum from the job store."""

from __future__ import annotations

from datetime import UTC, datetime

from qalign_schema.jobs import UsageOut
from service.jobs import JobStores, utcnow
from service.jobs.usage import usage_report
from service.usecases.errors import InvalidInput


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC (the zone the job object's times are given in)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class UsageLedger:
    def __init__(self, stores: JobStores) -> None:
        self.stores = stores

    def report(self, owner: str | None, since: datetime | None, until: datetime | None) -> UsageOut:
        """The caller's jobs created in [since, until) (until: now; since: every kept job)."""
        since, until = _aware(since), _aware(until) or utcnow()
        if since is not None and since >= until:
            raise InvalidInput(
                "since",
                f"{since.isoformat()} is not before until ({until.isoformat()})",
                "a time before until",
            )
        return usage_report(self.stores.records, owner, since, until)
