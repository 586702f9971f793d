"""The chaos suite's model (tests/chaos/flow.py) predicts its services exactly, idle timers
included: checked here in memory, in virtual time, so the chaos run's verdicts can be trusted."""

from __future__ import annotations

import random

import pytest

from router.testing import FlowTest
from tests.chaos import flow as chaos
from tests.chaos.load import make_plans

SERVICES = [chaos.top, chaos.mid, chaos.leaf, chaos.alt]


@pytest.mark.parametrize("seed", range(4))
async def test_the_model_predicts_every_notice_and_idle_notice(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chaos, "SLEEP", 0)
    plans, _ = make_plans(9, 6, random.Random(seed))
    assert sum(p.timer for p in plans) == 3
    async with FlowTest(SERVICES, root=chaos.ROOT, raise_errors=False) as flow:
        for plan in plans:
            for k, (payload, want) in enumerate(zip(plan.payloads, plan.expected,
                                                    strict=True)):
                notices = await flow.engine.converse(plan.session, payload, meta=plan.meta)
                got = [(n.type, n.payload if n.type in ("output", "unhandled") else
                        n.error.code if n.error else None) for n in notices]
                assert got == list(want), (plan.session, k, payload)
                idle = await flow.advance(chaos.IDLE_S, session=plan.session)
                assert idle == ([] if plan.idle[k] is None else [plan.idle[k][1]]), (
                    plan.session, k, payload)
            assert [(s, st) for s, st in zip(await flow.stack(session=plan.session),
                                             await flow.states(session=plan.session),
                                             strict=True)] == plan.final
