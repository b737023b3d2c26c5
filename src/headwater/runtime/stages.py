"""The lake writer's stages, built from settings: plan enforcement, then enrichments, then identity links.

Order matters: the plan sees events as they were sent (before enrichment adds columns), enrichments see only
events that will land, and identity links are recorded last (from events the plan kept).
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from headwater.core.settings import Settings
from headwater.core.stages import BatchStage

log = logging.getLogger(__name__)


def build_stages(settings: Settings, engine: sa.Engine) -> list[BatchStage]:
    """Every stage the settings turn on, in order."""
    from headwater.enrich import enrichment_stages
    from headwater.lake.identity import identity_stage
    from headwater.plan.enforce import PlanStage

    stages: list[BatchStage] = [PlanStage(settings, engine)]
    stages.extend(enrichment_stages(settings, engine))
    identity = identity_stage(settings, engine)
    if identity is not None:
        stages.append(identity)
    log.info("lake writer stages: %s", ", ".join(s.name for s in stages))
    return stages
