"""The ports are complete and own their errors: adapters implement every method of their
port, and the Redis adapter turns redis-py's failures into the store port's error."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import CrossSlotTransactionError, ReadOnlyError, ResponseError

from router.app import Router
from router.config import RouterConfig
from router.redis_store import RedisStore
from router.store import MemoryStore, SessionStore, StoreUnavailable
from worker_sdk import AmqpBroker, MemoryBroker
from worker_sdk.broker import Broker
from worker_sdk.errors import PublishFailed


def _methods(port: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(port).items()
            if inspect.isfunction(member) and not name.startswith("_")}


@pytest.mark.parametrize(("port", "adapters"), [(Broker, (AmqpBroker, MemoryBroker)),
                                               (SessionStore, (RedisStore, MemoryStore))])
def test_every_adapter_has_every_method_of_its_port_with_the_same_parameters(
        port: type, adapters: tuple[type, ...]) -> None:
    wanted = _methods(port)
    assert {"wait_lost", "queue_exists"} <= set(wanted) or port is SessionStore
    for adapter in adapters:
        for name, signature in wanted.items():
            member = getattr(adapter, name, None)
            assert member is not None, f"{adapter.__name__} lacks {name}"
            assert inspect.iscoroutinefunction(member) == inspect.iscoroutinefunction(
                getattr(port, name)), f"{adapter.__name__}.{name}"
            got = [(p.name, p.kind) for p in inspect.signature(member).parameters.values()]
            assert got == [(p.name, p.kind) for p in signature.parameters.values()], (
                f"{adapter.__name__}.{name}{inspect.signature(member)} is not {name}{signature}")


def _failing(error: Exception) -> Any:
    async def call(*args: Any, **kwargs: Any) -> Any:
        raise error
    return call


@pytest.mark.parametrize("error", [RedisConnectionError("Connection refused"),
                                   ReadOnlyError("You can't write against a read only replica."),
                                   ResponseError("OOM command not allowed")])
async def test_the_redis_adapter_maps_redis_failures_to_store_unavailable(
        error: Exception) -> None:
    store = RedisStore("redis://user:secret@127.0.0.1:1/0", "t")
    store._pipelined = _failing(error)  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.load("s")
        assert "secret" not in str(caught.value)
        assert caught.value.__cause__ is error
    finally:
        await store.close()


async def test_a_misuse_of_redis_is_a_bug_not_an_unavailable_store() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", "t")
    store._pipelined = _failing(CrossSlotTransactionError("keys in several slots"))  # type: ignore[method-assign]
    try:
        with pytest.raises(CrossSlotTransactionError):
            await store.load("s")
    finally:
        await store.close()


async def test_only_store_failures_count_towards_giving_up_on_the_store(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("router.app.time.monotonic", lambda: now[0])
    router = Router(RouterConfig(root="root", namespace="h"), MemoryBroker(), MemoryStore())
    for _ in range(3):  # a broker failing for a minute: the broker adapter's own business
        router._health(PublishFailed("no confirm"))
        now[0] += 31
    assert router.failure is None
    for _ in range(3):
        router._health(StoreUnavailable("Redis is not reachable"))
        now[0] += 31
    assert isinstance(router.failure, StoreUnavailable)
    await asyncio.wait_for(router.wait_failed(), 1)
