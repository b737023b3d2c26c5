"""The query engine model builds and data checks run on: the analysts' view of the lake, with bounded resources."""

from __future__ import annotations

from headwater.core.settings import Settings
from headwater.query.engine import QueryEngine


def build_engine(settings: Settings) -> QueryEngine:
    """A QueryEngine limited to `models_threads` / `models_memory_limit`, with no timeout shorter than 1 hour."""
    bounded = settings.model_copy(
        update={
            "query_threads": settings.models_threads,
            "query_memory_limit": settings.models_memory_limit,
            "query_timeout_s": max(settings.query_timeout_s, 3600.0),
            "query_fast_path": False,
        }
    )
    return QueryEngine(bounded)
