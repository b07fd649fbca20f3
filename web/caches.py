"""The per-application caches of the HTTP layer, and the write watch that keeps them current."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.queries import DataVersion, engine_of
from web.active_cache import ActiveProposalsCache
from web.db_probe import DatabaseProbe
from web.ports import WebContext


@dataclass(frozen=True)
class WebCaches:
    active: ActiveProposalsCache
    database: DatabaseProbe
    version: DataVersion = field(repr=False)

    @classmethod
    def for_context(cls, context: WebContext) -> WebCaches:
        version = DataVersion()
        return cls(
            ActiveProposalsCache(context.sessions, context.scope, version),
            DatabaseProbe(context.sessions),
            version,
        )

    def start(self) -> None:
        """Watch writes through the service's engine; without one nothing is cached (see DataVersion)."""
        engine = engine_of(self.active.sessions)
        if engine is not None:
            self.version.watch(engine)

    def stop(self) -> None:
        self.version.unwatch()
        self.active.snapshot = None
