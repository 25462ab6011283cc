"""The one clock: every "now" and "today" flopgate decides or signs with comes from here, in UTC.

The audit date, the rules date (the later of a plan's start and today), a statement's
``created`` time, a ledger row's time and the gate's age check all read :func:`utc_now`, so a
test fixes the date for all of them in one place (``tests/conftest.py``: ``fixed_clock``).
There is no environment variable or flag that moves this clock: an audit's age and the rules
in force must not be something the person running the gate can set.
"""

from __future__ import annotations

import datetime as dt


def _wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def utc_now() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return _wall_clock()


def utc_today() -> dt.date:
    """Today's date in UTC."""
    return utc_now().date()
