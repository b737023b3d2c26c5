"""Format versions of everything Headwater keeps, and the upgrade of older data directories on start.

`prepare(settings)` is the first thing every process does (see `prepare.py`); `headwater upgrade [--check]` shows
the formats and the pending steps (`status.py`); the versions and their markers are listed in `formats.py`, the
steps between them in `steps.py`.
"""

from headwater.upgrade.prepare import check, prepare
from headwater.upgrade.status import Status

__all__ = ["Status", "check", "prepare"]
