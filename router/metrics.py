"""Prometheus metrics of a router replica (docs/operations.md lists them).

The shell calls in here; the pure core knows nothing of it. What a step did is read from the
core's own values (the event, the record before, the outcome), so the instrumentation is a
few calls in the shell. Labels are bounded: services, events, actions, reasons, queues of the
namespace, phases. Never a session or a turn.
"""

from __future__ import annotations

import contextlib
import logging

import msgpack
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from .core import (
    ClientArrived,
    CoreConfig,
    Event,
    Outcome,
    Record,
    ReplyArrived,
    Tick,
    Undeliverable,
)

log = logging.getLogger(__name__)

TURN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0, 120.0)
PHASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 1.0, 5.0)
DEPTH_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64)
BACKLOG_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 500, 1000)
PHASES = ("load", "core", "commit", "publish", "discard")
DEPENDENCIES = ("redis", "rabbitmq")


class RouterMetrics:
    """One replica's metrics, in a registry of their own (one per process, or per test)."""

    def __init__(self, cfg: CoreConfig, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        disable_created_metrics()  # the *_created series only double the scrape
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.deliveries = Counter("cloudbunch_router_deliveries",
                                  "Messages consumed, by queue (ingress, replies)", ["queue"],
                                  registry=r)
        self.turns = Counter(
            "cloudbunch_router_turns",
            "Turns decided: by the reply's action, or timeout, invalid_reply, unknown_service",
            ["service", "event", "action"], registry=r)
        self.turn_seconds = Histogram(
            "cloudbunch_router_turn_seconds",
            "From a turn's (last) dispatch to its reply applied", ["service"],
            buckets=TURN_BUCKETS, registry=r)
        self.chains = Counter(
            "cloudbunch_router_chains",
            "Chains ended, by outcome (reply, end, error, unhandled)", ["outcome"], registry=r)
        self.redispatches = Counter("cloudbunch_router_redispatches",
                                    "Turns dispatched again after their deadline", ["service"],
                                    registry=r)
        self.timeouts = Counter("cloudbunch_router_timeouts",
                                "Turns failed with timeout (no valid reply in max-attempts)",
                                ["service"], registry=r)
        self.invalid_replies = Counter("cloudbunch_router_invalid_replies",
                                       "Turns failed with invalid_reply", ["service"], registry=r)
        self.unknown_services = Counter(
            "cloudbunch_router_unknown_services",
            "Dispatches returned by the broker: the service's queue does not exist",
            ["service"], registry=r)
        self.fenced = Counter(
            "cloudbunch_router_fenced_replies",
            "Replies dropped because their turn is not in flight (late, duplicated, forged)",
            registry=r)
        self.duplicates = Counter("cloudbunch_router_duplicate_messages",
                                  "Client messages dropped as already seen (dedup)",
                                  registry=r)
        self.busy = Counter("cloudbunch_router_busy_refusals",
                            "Client messages refused because the session had max-waiting",
                            registry=r)
        self.dead_letters = Counter("cloudbunch_router_dead_letters",
                                    "Messages sent to NS.dead, by source queue and reason",
                                    ["queue", "reason"], registry=r)
        self.notices = Counter("cloudbunch_router_notices", "Notices sent, by type", ["type"],
                               registry=r)
        self.notices_dropped = Counter(
            "cloudbunch_router_notices_dropped",
            "Notices the broker returned (no such reply_to queue) or refused", registry=r)
        self.stack_depth = Histogram("cloudbunch_router_stack_depth",
                                     "Frames on the stack after each applied reply",
                                     buckets=DEPTH_BUCKETS, registry=r)
        self.backlog = Histogram(
            "cloudbunch_router_session_backlog",
            "Messages waiting or held in a session, after each accepted client message",
            buckets=BACKLOG_BUCKETS, registry=r)
        self.idle_set = Counter("cloudbunch_router_idle_timers_set",
                                "Idle timers set by replies", registry=r)
        self.idle_fired = Counter("cloudbunch_router_idle_timers_fired",
                                  "Idle timers that fired", registry=r)
        self.outages = Counter("cloudbunch_router_outages",
                               "Times a dependency (redis, rabbitmq) became unreachable",
                               ["dependency"], registry=r)
        self.up = Gauge("cloudbunch_router_dependency_up",
                        "1 while the dependency (redis, rabbitmq) answers", ["dependency"],
                        registry=r)
        self.phase_seconds = Histogram(
            "cloudbunch_router_step_phase_seconds",
            "Time per phase of a step (load, core, commit, publish, discard)", ["phase"],
            buckets=PHASE_BUCKETS, registry=r)
        self.partitions_owned = Gauge(
            "cloudbunch_router_partitions_owned",
            "Ingress partitions this replica owns (--partitions; 0 without)", registry=r)
        self.replicas = Gauge(
            "cloudbunch_router_replicas",
            "Live router replicas, as this one last heard from the store (--partitions)",
            registry=r)
        self.handovers = Counter(
            "cloudbunch_router_partition_handovers",
            "Partition queues this replica handed over to their owner", registry=r)
        self._phase = {p: self.phase_seconds.labels(p) for p in PHASES}
        self._up = {d: True for d in DEPENDENCIES}
        for d in DEPENDENCIES:
            self.outages.labels(d)
            self.up.labels(d).set(1)
        for q in ("ingress", "replies"):
            self.deliveries.labels(q)
        for outcome in ("reply", "end", "error", "unhandled"):
            self.chains.labels(outcome)
        for kind in ("output", "end", "error", "unhandled"):
            self.notices.labels(kind)

    # ------------------------------------------------------------------ called by the shell

    def phase(self, name: str, seconds: float) -> None:
        self._phase[name].observe(seconds)

    def dependency(self, name: str, up: bool) -> None:
        """The dependency answered (``up``) or failed; a change to down counts an outage."""
        if up == self._up[name]:
            return
        self._up[name] = up
        self.up.labels(name).set(1 if up else 0)
        if not up:
            self.outages.labels(name).inc()
            log.warning("event=dependency_down dependency=%s", name)
        else:
            log.info("event=dependency_up dependency=%s", name)

    def dead_letter(self, queue: str, reason: str) -> None:
        self.dead_letters.labels(queue, reason).inc()

    def stepped(self, event: Event, before: Record | None, out: Outcome) -> None:
        """A step was applied (committed): count what it did."""
        after = out.record
        assert after is not None
        now = after.stamp_ms
        turn = before.turn if before is not None else None
        service = (before.stack[turn.depth].service
                   if before is not None and turn is not None and turn.depth < len(before.stack)
                   else "")
        kinds = self._effects(out)
        if isinstance(event, ReplyArrived) and turn is not None:
            invalid = event.reply is None or "dead" in kinds
            action = "invalid_reply" if invalid else event.reply.action  # type: ignore[union-attr]
            self.turns.labels(service, turn.event, action).inc()
            sent_ms = turn.deadline_ms - self.cfg.turn_timeout_ms
            self.turn_seconds.labels(service).observe(max(0, now - sent_ms) / 1000)
            self.stack_depth.observe(len(after.stack))
            if invalid:
                self.invalid_replies.labels(service).inc()
            elif getattr(event.reply, "idle", None):
                self.idle_set.inc()
        elif isinstance(event, Tick) and turn is not None and turn.deadline_ms <= now:
            if after.turn is not None and after.turn.id == turn.id:
                self.redispatches.labels(service).inc()
            else:
                self.turns.labels(service, turn.event, "timeout").inc()
                self.timeouts.labels(service).inc()
        elif isinstance(event, Undeliverable) and turn is not None:
            self.turns.labels(service, turn.event, "unknown_service").inc()
            self.unknown_services.labels(service).inc()
        elif isinstance(event, ClientArrived):
            if event.message.type == "message" and out.remember is None:
                self.busy.inc()
            self.backlog.observe(len(after.waiting) + len(after.held))
        if after.turn is not None and after.turn.event == "idle" and (
                turn is None or turn.id != after.turn.id):
            self.idle_fired.inc()
        chain = before.chain if before is not None else None
        if chain is not None and (after.chain is None or after.chain.origin != chain.origin):
            outcome = next((k for k in ("error", "end", "unhandled") if k in kinds), "reply")
            self.chains.labels(outcome).inc()

    def _effects(self, out: Outcome) -> set[str]:
        """Count the notices and dead letters a step made; return the kinds seen."""
        kinds: set[str] = set()
        for effect in out.effects:
            if effect.kind == "notice":
                kind = _notice_type(effect.body)
                self.notices.labels(kind).inc()
                kinds.add(kind)
            elif effect.kind == "dead":
                kinds.add("dead")
                self.dead_letter(effect.headers.get("x-cb-source-queue", ""),
                                 effect.headers.get("x-cb-reason", ""))
        return kinds


def _notice_type(body: bytes) -> str:
    with contextlib.suppress(Exception):
        kind = msgpack.unpackb(body, raw=False).get("type")
        if isinstance(kind, str):
            return kind
    return "unknown"
