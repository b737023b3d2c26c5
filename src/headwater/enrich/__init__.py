"""Enrichments: writer stages (`headwater.core.stages.BatchStage`) that add columns to each batch of events.

`enrichment_stages(settings, engine)` builds the enabled ones, in this order:
1. `useragent` — browser, browser_version, os, os_version, device_type (`enrich_user_agent`);
2. `bots` — is_bot, bot_reason; sets device_type `bot` (`enrich_bots`);
3. `geoip` — country, region, city, from the whole address (`enrich_geoip_database`);
4. `ip` — ip kept, anonymised or NULL, and the same done to `context` (`enrich_ip`; always on);
5. `referrer` — channel, referrer_domain, utm_*, click_id (`enrich_referrer`);
6. `sessions` — session_id, state in the catalog database (`enrich_sessions`, `session_timeout_minutes`);
7. `functions` — the user's functions, which see every column above (`enrich_functions`).
Each module's docstring gives its rules. All of them work on whole Arrow columns or on the distinct values of
a batch (cached across batches), never with a Python loop per event.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from headwater.core.settings import Settings
from headwater.core.stages import BatchStage
from headwater.enrich.common import ENRICHED_COLUMNS, FIXED_COLUMNS, EnrichmentError

__all__ = ["ENRICHED_COLUMNS", "FIXED_COLUMNS", "EnrichmentError", "enrichment_stages"]
log = logging.getLogger(__name__)


def enrichment_stages(settings: Settings, engine: sa.Engine | None) -> list[BatchStage]:
    """The enabled enrichments, in order; logs once which are on and why any is off.

    `engine` is the catalog database's (sessions keep their state there); None turns sessions off. Raises
    ConfigError for a GeoIP database or a user function that cannot be loaded."""
    stages: list[BatchStage] = []
    off: list[str] = []
    if settings.enrich_user_agent:
        from headwater.enrich.useragent import UserAgentStage

        stages.append(UserAgentStage())
    else:
        off.append("user agent (enrich_user_agent = false)")
    if settings.enrich_bots:
        from headwater.enrich.bots import BotStage

        stages.append(BotStage())
    else:
        off.append("bots (enrich_bots = false)")
    if settings.enrich_geoip_database is not None:
        from headwater.enrich.geoip import GeoIPStage

        stages.append(GeoIPStage(settings.enrich_geoip_database))
    else:
        off.append("GeoIP (no enrich_geoip_database: country, region and city are not added)")
    from headwater.enrich.ip import IPStage

    stages.append(IPStage(settings.enrich_ip))
    if settings.enrich_referrer:
        from headwater.enrich.referrer import ReferrerStage

        stages.append(ReferrerStage())
    else:
        off.append("referrer (enrich_referrer = false)")
    if settings.enrich_sessions and engine is not None:
        from headwater.enrich.sessions import SessionStage

        stages.append(SessionStage(engine, settings.session_timeout_minutes))
    else:
        off.append("sessions (enrich_sessions = false)" if not settings.enrich_sessions else "sessions (no database)")
    if settings.enrich_functions:
        from headwater.enrich.functions import FunctionStage

        stages.append(FunctionStage(list(settings.enrich_functions)))
    on = "; ".join(getattr(stage, "describe", stage.name) for stage in stages)
    log.info("enrichments on: %s%s", on or "none", f"; off: {'; '.join(off)}" if off else "")
    return stages
