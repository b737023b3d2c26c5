"""Stream processors: declare a pipeline over a stream, run it on the log, test it in-process.

See `api` for the operators, `runtime` for how it runs (and the checkpoint commit order),
`testing.TestDriver` for unit tests, `sinks` for external systems.
"""

from headwater.processing.api import Pipeline, Stream, days, hours, minutes, seconds
from headwater.processing.joins import ReferenceTable
from headwater.processing.task import Context, Timer
from headwater.processing.testing import TestDriver

__all__ = [
    "Context", "Pipeline", "ReferenceTable", "Stream", "TestDriver", "Timer", "days", "hours", "minutes", "seconds",
]  # fmt: skip
