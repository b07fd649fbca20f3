"""The per-application caches of the HTTP layer, and the write watch that keeps them current."""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.analytics import Report
from storage.queries import DataVersion, engine_of
from web.active_cache import ActiveProposalsCache
from web.db_probe import DatabaseProbe
from web.ports import WebContext


@dataclass
class AnalyticsMemo:
    """The dashboard's analytics (every proposal and vote read, then computed): at most every `min_age`
    seconds while this process writes, else every `max_age` seconds (outcomes, other processes' writes), so
    open pages refreshing every few seconds cost one computation per interval, not one per refresh."""

    min_age: float = 2.0
    max_age: float = 15.0
    report: Report | None = None
    computed_at: float = 0.0
    version: int = -1

    def due(self, version: int, clock: float) -> bool:
        if self.report is None:
            return True
        age = clock - self.computed_at
        return age >= self.max_age or (version != self.version and age >= self.min_age)

    def store(self, report: Report, version: int, clock: float) -> None:
        self.report, self.version, self.computed_at = report, version, clock


@dataclass
class HealthMemo:
    """/health's encoded answer, reused for `max_age` seconds: a monitor or a load balancer polling hundreds
    of times a second (during a voting burst, on the voter's event loop) costs one evaluation of every check
    per interval. A tenth of a second is far below any probe's period, so no change goes unseen."""

    max_age: float = 0.1
    answer: tuple[bytes, int] | None = None
    computed_at: float = 0.0

    def fresh(self, clock: float) -> tuple[bytes, int] | None:
        if self.answer is not None and clock - self.computed_at < self.max_age:
            return self.answer
        return None

    def store(self, answer: tuple[bytes, int], clock: float) -> None:
        self.answer, self.computed_at = answer, clock


@dataclass(frozen=True)
class WebCaches:
    active: ActiveProposalsCache  # every deployment
    database: DatabaseProbe
    version: DataVersion = field(repr=False)
    analytics: AnalyticsMemo = field(default_factory=AnalyticsMemo, repr=False)
    health: HealthMemo = field(default_factory=HealthMemo, repr=False)
    # /active-proposals?deployment=NAME, one snapshot per deployment asked for
    by_deployment: dict[str, ActiveProposalsCache] = field(default_factory=dict, repr=False)

    @classmethod
    def for_context(cls, context: WebContext) -> WebCaches:
        version = DataVersion()
        return cls(
            ActiveProposalsCache(context.sessions, context.everything, version),
            DatabaseProbe(context.sessions),
            version,
        )

    def active_of(self, context: WebContext, deployment: str | None) -> ActiveProposalsCache:
        """The snapshot for `?deployment=` (LookupError for a name no deployment has)."""
        if deployment is None:
            return self.active
        context.deployment_scope(deployment)  # an unknown name is refused before a cache is made for it
        cache = self.by_deployment.get(deployment)
        if cache is None:
            cache = ActiveProposalsCache(
                self.active.sessions, lambda: context.deployment_scope(deployment), self.version
            )
            self.by_deployment[deployment] = cache
        return cache

    def start(self) -> None:
        """Watch writes through the service's engine; without one nothing is cached (see DataVersion)."""
        engine = engine_of(self.active.sessions)
        if engine is not None:
            self.version.watch(engine)

    def stop(self) -> None:
        self.version.unwatch()
        self.active.snapshot = None
        for cache in self.by_deployment.values():
            cache.snapshot = None
