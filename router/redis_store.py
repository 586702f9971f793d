"""The Redis adapter of the session store port (:class:`router.store.SessionStore`).

Key layout, all under ``NS:`` (the namespace). Each session's keys share one hash tag,
derived from the session id by hashing, so a brace in an id cannot move a key to another
slot and every script touches one slot only (Redis Cluster):

- ``NS:{tag}:r`` hash: ``v`` version, ``b`` record blob;
- ``NS:{tag}:o`` list: the outbox, oldest first;
- ``NS:{tag}:d`` list: 12-byte digests of the last DEDUP_MEMORY client message ids, newest
  first (a list of fixed-size digests is a fraction of the memory of a sorted set);
- ``NS:{tag}:h`` list: the session's history entries, oldest first, at most the router's
  ``--history`` (only when history is on);
- ``NS:{due-K}:due`` sorted sets, K in 0..7: the deadline index, member session id, score
  due time in ms; ``NS:{due-K}:n`` holds the last lease handed out from shard K.

On Redis Cluster (a ``redis+cluster://`` URL, see :class:`RedisStore`) each script runs on
the node owning its slot; the sessions spread over the primaries by their tags and the eight
deadline shards by theirs.

redis-py retries a command after a lost connection, so every write here is either
conditional (the version, the lease) or idempotent: a repeated write changes nothing. One
consequence: a commit whose reply was lost and which is retried reports False although the
first attempt applied; the caller re-reads and finds its own write.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import os
import zlib
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.redis_batch import send_and_read
from worker_sdk.errors import ConfigError
from worker_sdk.settings import check_namespace
from worker_sdk.urls import redact

from .store import DEDUP_MEMORY, Snapshot, StoreUnavailable

logger = logging.getLogger(__name__)

HINT_SHARDS = 8
"""Sorted sets the deadline index is spread over (each with its own hash tag)."""

RETRIES = 4
"""Retries of a command after a connection error or timeout, with exponential backoff."""

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
STARTUP_WAIT = 30.0
"""Seconds a process starting waits for Redis to answer (as for RabbitMQ)."""

REDIS_URL_SETTING = "CLOUDBUNCH_REDIS_URL (--redis-url)"

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that select Redis Cluster, and the plain scheme each stands for."""

# Errors of a cluster that is down, resharding or not reachable at all (the client raises
# RedisClusterException when no seed node answers). Two subclasses are caller mistakes.
_CLUSTER_DOWN = (ClusterDownError, TryAgainError, RedisClusterException)
_CLUSTER_MISUSE = (CrossSlotTransactionError, InvalidPipelineStack)


_CONNECTION_LAYER = os.path.join("redis", "asyncio", "connection.py")


def _connection_fault(error: BaseException) -> bool:
    """An error redis-py lets through as it comes from its connection layer, raised while a
    node dies under a connection in use: uvloop's RuntimeError('unable to perform operation
    on <TCPTransport closed=True ...>; the handler is closed'), AttributeError("'NoneType'
    object has no attribute 'writelines'") from a connection another task just
    disconnected. Seen in Redis Cluster pipelines while a master was killed: a failure of
    the world (the command is retried), not a bug of the router (which would dead-letter the
    message being handled)."""
    if not isinstance(error, (RuntimeError, AttributeError)):
        return False
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_CONNECTION_LAYER):
            return True
        tb = tb.tb_next
    return False

# KEYS: record, outbox, dedup. ARGV[1]: dedup digest, or '' for none.
_LOAD = """
local rec = redis.call('HMGET', KEYS[1], 'v', 'b')
local out = redis.call('LRANGE', KEYS[2], 0, -1)
local seen = 0
if ARGV[1] ~= '' and redis.call('LPOS', KEYS[3], ARGV[1]) then seen = 1 end
return {rec[1], rec[2], out, seen}
"""

# KEYS: record, outbox, dedup, history.
# ARGV: expected version, record, expire_at_ms, dedup digest or '', history bound,
#       number of history entries H, H history entries..., outbox entries...
_COMMIT = f"""
local v = tonumber(redis.call('HGET', KEYS[1], 'v')) or 0
if v ~= tonumber(ARGV[1]) then return 0 end
if ARGV[4] ~= '' and redis.call('LPOS', KEYS[3], ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'b', ARGV[2])
local h = tonumber(ARGV[6])
if h > 0 then
  redis.call('RPUSH', KEYS[4], unpack(ARGV, 7, 6 + h))
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[5]), -1)
end
local n = #ARGV
local i = 7 + h
while i <= n do
  -- in slices: unpack of a huge table overflows the Lua C stack
  local j = math.min(i + 999, n)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], 0, {DEDUP_MEMORY - 1})
end
for k = 1, 4 do redis.call('PEXPIREAT', KEYS[k], ARGV[3]) end
return 1
"""

# KEYS: record. Rewrites the record's expiry unchanged: a write that replicates, so that a
# WAIT after it covers every earlier write of the node.
_BARRIER = """
local t = redis.call('PEXPIRETIME', KEYS[1])
if t > 0 then redis.call('PEXPIREAT', KEYS[1], t) end
return 1
"""

# KEYS: record, outbox, dedup, history. Deletes the session whole.
_DELETE = """
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
"""

# KEYS: outbox. ARGV: entries to remove, one occurrence each (the oldest).
_DISCARD = """
for i = 1, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return 0
"""

# KEYS: shard, last lease of the shard. ARGV: now_ms, lease_ms, limit.
# Leases of a shard strictly increase, so no two claims ever share one: settle_hint can tell
# its own claim from a later claim or from a hint a step wrote meanwhile.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
if #due == 0 then return {} end
local lease = tonumber(ARGV[1]) + tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[2])) or 0
local out = {}
for _, member in ipairs(due) do
  if lease <= last then lease = last + 1 end
  last = lease
  redis.call('ZADD', KEYS[1], lease, member)
  out[#out + 1] = member
  out[#out + 1] = lease
end
redis.call('SET', KEYS[2], last)
return out
"""

# KEYS: shard. ARGV: session, lease, due_ms or '' to remove.
_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # how Redis names a script


_SCRIPTS = {_sha(script): script for script in (_LOAD, _COMMIT, _DISCARD, _SETTLE)}
"""The scripts the steps run through the pipeliner, by SHA1 (loaded on NOSCRIPT)."""


_SHA_OF = {script: sha for sha, script in _SCRIPTS.items()}


def _evalsha(script: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
    return ("EVALSHA", _SHA_OF[script], len(keys), *keys, *args)


PIPELINES = 1
"""Pipelines in flight at once to one server (each on its own pooled connection). One: while
a batch is out, the next one fills, so batches grow with the load and each costs one write
and one read on both sides (docs/benchmarks.md has the measurements against four)."""


class _Pipeliner:
    """Group commit for one Redis server: the commands of concurrent steps travel together.

    While PIPELINES pipelines are in flight, the commands of other steps wait and then go out
    together in the next one: one write, one round trip and one connection for many
    sessions instead of one each, and Redis reads them in one go. Each caller still awaits
    its own replies, so nothing is published or acknowledged before its commit is known; a
    session's commands stay in order because its steps run one at a time.

    A caller that finds nothing waiting and a pipeline free sends its commands itself, at
    once: at low load (every step alone) that saves a task and a turn of the event loop per
    command. The pipelines have connections of their own, made from the client's pool
    settings and kept: taking one from redis-py's pool and giving it back (a lock, its
    readiness check, its events) cost more than the round trip's own work.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._waiting: list[tuple[tuple[tuple[Any, ...], ...], asyncio.Future[list[Any]]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._sending = 0
        """Pipelines in flight: flusher tasks and callers sending their own commands."""
        self._idle: list[Any] = []
        """Connections of the pipelines, not in use."""
        self._all: list[Any] = []

    async def run(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` (in order) with the next pipeline; their replies, where an error
        reply is an exception object (not raised)."""
        if not self._waiting and self._sending < PIPELINES:
            self._sending += 1
            try:
                return await self._exchange(list(commands))
            finally:
                self._sending -= 1
                self._kick()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        """Start a flusher for the waiting commands if a pipeline is free."""
        if self._waiting and self._sending < PIPELINES:
            self._sending += 1
            flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="cloudbunch-redis-pipeline")
            self._flushers.add(flusher)

    async def _flush(self) -> None:
        try:
            while True:
                if not self._waiting:
                    # Let the callers the last replies woke queue their next commands
                    # first: they go out together in the next batch, not the first of them
                    # alone (a caller finding the pipelines idle sends its own at once).
                    await asyncio.sleep(0)
                    if not self._waiting:
                        break
                batch, self._waiting = self._waiting, []
                try:
                    replies = await self._exchange(
                        [command for commands, _ in batch for command in commands])
                except BaseException as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    continue
                start = 0
                for commands, future in batch:
                    if not future.done():
                        future.set_result(replies[start:start + len(commands)])
                    start += len(commands)
        finally:
            # Leave the count the moment nothing is waiting, not in a done callback a loop
            # turn later: a caller woken by the results above may queue its next commands
            # first, and would wait for a flusher that no longer runs (with every pipeline
            # slot held by finished flushers, until some other step came along).
            self._sending -= 1
            self._flushers.discard(cast("asyncio.Task[None]", asyncio.current_task()))

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write on a pipeline's connection and read their replies
        (an error reply as its exception object). On a lost connection or a timeout, the
        whole batch is sent again on a new connection, with the client's retry policy, as
        redis-py's own pipeline does: every command the steps send is conditional or
        idempotent. Straight on the connection: redis-py's pipeline object adds, per batch,
        a command stack, response callbacks and its own instrumentation."""
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = self._redis.connection_pool.make_connection()
            self._all.append(connection)
        try:
            return await connection.retry.call_with_retry(
                lambda: send_and_read(connection, commands),
                lambda _error: connection.disconnect())
        finally:
            self._idle.append(connection)

    async def close(self) -> None:
        """Close the pipelines' connections."""
        for connection in self._all:
            await connection.disconnect()


WAIT_OPTIONS = ("wait_replicas", "wait_timeout")
"""URL query options of the store itself (not passed to redis-py), see :class:`RedisStore`."""


def take_wait_options(url: str) -> tuple[str, int, int]:
    """The URL without ``wait_replicas`` / ``wait_timeout``, and their values (0 and 1000 ms
    when absent)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    mine = {k: v for k, v in pairs if k in WAIT_OPTIONS}
    values: dict[str, int] = {}
    for name, default, low in (("wait_replicas", 0, 0), ("wait_timeout", 1000, 1)):
        raw = mine.get(name, str(default))
        try:
            values[name] = int(raw)
        except ValueError:
            values[name] = low - 1
        if values[name] < low:
            raise ConfigError(f"CLOUDBUNCH_REDIS_URL (--redis-url): {name} must be a whole "
                              f"number of at least {low}, not {raw!r}")
    rest = urlencode([(k, v) for k, v in pairs if k not in WAIT_OPTIONS])
    return (urlunsplit(parts._replace(query=rest)), values["wait_replicas"],
            values["wait_timeout"])


def split_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]] | None:
    """For a cluster URL: a plain URL of its first seed node and the other seeds' addresses.

    None for a URL of a single server. Raises ValueError for a malformed cluster URL.
    """
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        return None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for host in hosts.split(","):
        one = urlsplit(f"//{host}")
        try:
            port = one.port or 6379
        except ValueError as error:
            raise ValueError(f"bad port in Redis Cluster URL {redact(url)}") from error
        if not one.hostname:
            raise ValueError(f"a host is missing in Redis Cluster URL {redact(url)}")
        seeds.append((one.hostname, port))
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"Redis Cluster has database 0 only: {redact(url)}")
    first = hosts.split(",")[0]
    seed = urlunsplit(parts._replace(scheme=scheme, netloc=userinfo + at + first, path=""))
    return seed, seeds[1:]


def _url_refused(error: BaseException) -> str:
    """What of the URL Redis refused ("the login", "the database number"), or ""."""
    if isinstance(error, AuthenticationError):
        return "the login"
    text = str(error)
    if "DB index is out of range" in text or "invalid DB index" in text:
        return "the database number of the URL's path"
    if "NOAUTH" in text or "WRONGPASS" in text:
        return "the login"
    return ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


@functools.lru_cache(maxsize=65_536)
def _session_keys(namespace: str, session: str) -> tuple[str, str, str, str]:
    # A step asks three or four times (load, commit, discard): hashed once per session while
    # it is busy, not each time.
    digest = hashlib.sha256(session.encode()).digest()[:16]
    tag = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    prefix = f"{namespace}:{{{tag}}}:"
    return prefix + "r", prefix + "o", prefix + "d", prefix + "h"


def _dedup_digest(dedup_id: str) -> bytes:
    # Fixed 12 bytes per remembered id whatever the id's length; 96 bits make a false
    # "seen" practically impossible.
    return hashlib.blake2b(dedup_id.encode(), digest_size=12).digest()


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore:
    """Session store on one Redis server or on a Redis Cluster, chosen by the URL.

    ``redis://[user[:password]@]host[:port][/db]`` (``rediss://`` for TLS): one server.
    ``redis+cluster://[user[:password]@]host[:port][,host[:port]...][/0]`` (and
    ``rediss+cluster://``): a Redis Cluster. The hosts are seed nodes: any one that answers
    is enough, the client finds the other nodes and follows resharding and failover. A
    cluster has database 0 only. Query parameters are passed on as with ``redis://``.

    Two query parameters are the store's own: ``wait_replicas=N`` makes every commit wait
    (Redis ``WAIT``) until N replicas of its node have it, for at most ``wait_timeout``
    milliseconds (default 1000); a commit they do not confirm in time fails as a transient
    store error, so the step is retried and its delivery is neither published nor
    acknowledged before a replica holds it. Replication being asynchronous, without it a
    failover can lose acknowledged commits (docs/reliability.md, "Clusters").
    """

    def __init__(self, url: str, namespace: str) -> None:
        self._url = url
        url, self.wait_replicas, self.wait_timeout_ms = take_wait_options(url)
        self._ns = check_namespace(namespace)
        self._hint_keys = [self._shard(i)[0] for i in range(HINT_SHARDS)]
        self._queues_key = f"{self._ns}:queues"
        self._replicas_key = f"{self._ns}:replicas"
        options: dict[str, Any] = {
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES),
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "health_check_interval": 30,
            # The router runs up to two prefetch windows of steps at once, each holding a
            # connection for a moment: more than redis-py's default of 100.
            "max_connections": 512,
        }
        # No I/O here: the client connects (and, on a cluster, maps the slots) on first use.
        cluster = split_cluster_url(url)
        self._redis: Redis | RedisCluster
        if cluster is None:
            self._redis = Redis.from_url(url, **options)
        else:
            seed, others = cluster
            self._redis = RedisCluster.from_url(
                seed, startup_nodes=[ClusterNode(host, port) for host, port in others],
                **options)
        self.is_cluster = cluster is not None
        # On one server, the steps' commands are pipelined together (group commit); a
        # cluster client sends each to its slot's node as before.
        self._pipeliner = _Pipeliner(self._redis) if isinstance(self._redis, Redis) else None
        self._load = self._redis.register_script(_LOAD)
        self._commit = self._redis.register_script(_COMMIT)
        self._discard = self._redis.register_script(_DISCARD)
        self._claim = self._redis.register_script(_CLAIM)
        self._settle = self._redis.register_script(_SETTLE)
        self._delete = self._redis.register_script(_DELETE)
        self._next_shard = 0

    # -- keys -----------------------------------------------------------------------------

    def session_keys(self, session: str) -> tuple[str, str, str, str]:
        """The record, outbox, dedup and history keys of a session."""
        return _session_keys(self._ns, session)

    def _shard(self, index: int) -> tuple[str, str]:
        return f"{self._ns}:{{due-{index}}}:due", f"{self._ns}:{{due-{index}}}:n"

    def _hint_key(self, session: str) -> str:
        return self._hint_keys[zlib.crc32(session.encode()) % HINT_SHARDS]

    # -- errors ---------------------------------------------------------------------------

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"Redis is not reachable at {redact(self._url)}: "
                                f"{_first_line(error)}; "
                                f"start it or correct {REDIS_URL_SETTING}")

    def _refused(self, error: BaseException) -> StoreUnavailable:
        text = " ".join(str(error).split()) or type(error).__name__
        return StoreUnavailable(f"Redis at {redact(self._url)} failed a command: {text}")

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Map every failure of Redis to StoreUnavailable, here at the adapter's boundary,
        so that no caller needs to know redis-py's exceptions."""
        # Reached only once redis-py's own retries are spent.
        try:
            yield
        except _CLUSTER_MISUSE:
            raise  # a bug in how the store calls Redis, not a state of Redis
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise self._unavailable(error) from error
        except _CLUSTER_DOWN as error:
            raise self._unavailable(error) from error
        except RedisError as error:  # READONLY during a failover, OOM, LOADING...
            raise self._refused(error) from error
        except (RuntimeError, AttributeError) as error:
            if not _connection_fault(error):
                raise
            raise self._unavailable(error) from error

    # -- the port -------------------------------------------------------------------------

    async def load(self, session: str, dedup_id: str | None = None) -> Snapshot:
        """Read record, version, outbox and (if ``dedup_id``) whether that id was seen."""
        digest = _dedup_digest(dedup_id) if dedup_id is not None else b""
        keys = self.session_keys(session)
        async with self._guard():
            if self._pipeliner is not None:
                (reply,) = await self._pipelined(_evalsha(_LOAD, keys, [digest]))
                version, record, outbox, seen = reply
            else:
                version, record, outbox, seen = await self._load(keys=keys, args=[digest])
            if outbox and self.wait_replicas:
                # An outbox left by a step that may have died before its WAIT: publish it
                # only once a replica holds it (a barrier write, then WAIT).
                await self._replicated(_BARRIER, keys[:1], (), "an outbox")
        return Snapshot(version=int(version or 0), record=record, outbox=list(outbox),
                        seen=bool(seen))

    async def commit(self, session: str, expected_version: int, record: bytes, *,
                     append: Sequence[bytes] = (), remember: str | None = None,
                     expire_at_ms: int, hint_ms: int | None = None,
                     history: Sequence[bytes] = (), history_max: int = 0) -> bool:
        """Compare-and-set the record, append to the outbox, remember an id, set expiry."""
        digest = _dedup_digest(remember) if remember is not None else b""
        keys = self.session_keys(session)
        kept = list(history) if history_max > 0 else []
        args: list[bytes | int] = [expected_version, record, expire_at_ms, digest,
                                   history_max, len(kept), *kept, *append]
        if self.wait_replicas:
            return await self._commit_replicated(session, keys, args, hint_ms)
        async with self._guard():
            # The hint goes before the record: a stale hint is harmless, a missing one loses
            # a deadline. On one server both travel in one pipeline, executed in order.
            if self._pipeliner is not None:
                commands = [_evalsha(_COMMIT, keys, args)]
                if hint_ms is not None:
                    commands.insert(0, ("ZADD", self._hint_key(session), hint_ms, session))
                *_, applied = await self._pipelined(*commands)
                return bool(applied)
            if hint_ms is not None:
                await self._redis.zadd(self._hint_key(session), {session: hint_ms})
            return bool(await self._commit(keys=keys, args=args))

    async def _commit_replicated(self, session: str, keys: Sequence[str],
                                 args: list[bytes | int], hint_ms: int | None) -> bool:
        """The commit, then WAIT for the replicas: False if not applied, StoreUnavailable if
        applied but not confirmed by ``wait_replicas`` replicas in time."""
        async with self._guard():
            if hint_ms is not None:
                await self._redis.zadd(self._hint_key(session), {session: hint_ms})
            applied = await self._replicated(_COMMIT, keys, args, "a commit")
        return bool(applied)

    async def _replicated(self, script: str, keys: Sequence[str], args: Sequence[bytes | int],
                          what: str) -> Any:
        """Run ``script``, then WAIT on the same connection: WAIT counts the replicas that
        hold every write of its connection (and so every earlier write of that node)."""
        wait = ("WAIT", self.wait_replicas, self.wait_timeout_ms)
        pipe: Any
        if self.is_cluster:
            cluster: Any = self._redis
            await cluster.initialize()  # the slot map, when this is the client's first command
            pipe = cluster.pipeline()
            # EVAL, not EVALSHA: a node promoted by a failover has no script cache.
            pipe.execute_command("EVAL", script, len(keys), *keys, *args)
            pipe.execute_command(*wait, target_nodes=cluster.get_node_from_key(keys[0]))
        else:
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command("EVAL", script, len(keys), *keys, *args)
            pipe.execute_command(*wait)
        result, acked = await pipe.execute()
        if result and int(acked) < self.wait_replicas:
            raise StoreUnavailable(
                f"{what} was confirmed by {int(acked)} of {self.wait_replicas} Redis "
                f"replica(s) within {self.wait_timeout_ms} ms (wait_replicas in "
                "CLOUDBUNCH_REDIS_URL); retrying the step")
        return result

    async def discard(self, session: str, entries: Sequence[bytes], *,
                      unhint_ms: int | None = None) -> None:
        """Remove exactly these entries (one occurrence each) from the outbox; and if
        ``unhint_ms`` is given, remove the session's hint if it still equals that."""
        outbox = [self.session_keys(session)[1]]
        unhint: list[str | int] = [session, unhint_ms or 0, ""]
        async with self._guard():
            if self._pipeliner is not None:
                commands = [_evalsha(_DISCARD, outbox, entries)] if entries else []
                if unhint_ms is not None:
                    commands.append(_evalsha(_SETTLE, [self._hint_key(session)], unhint))
                if commands:
                    await self._pipelined(*commands)
                return
            if unhint_ms is None:
                if entries:
                    await self._discard(keys=outbox, args=list(entries))
            else:
                if entries:
                    await self._discard(keys=outbox, args=list(entries))
                await self._settle(keys=[self._hint_key(session)], args=unhint)

    async def _pipelined(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Run ``commands`` in the next group-commit pipeline; their replies. An error reply
        is raised (the first one); a script Redis does not know (restarted, flushed) is
        loaded and the commands are sent again, which is safe: each is conditional or
        idempotent, and the one that said NOSCRIPT did nothing."""
        assert self._pipeliner is not None
        replies = await self._pipeliner.run(*commands)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            for command in commands:
                if command[0] == "EVALSHA":
                    await self._redis.script_load(_SCRIPTS[command[1]])
            replies = await self._pipeliner.run(*commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def add_hint(self, session: str, due_ms: int) -> None:
        """Set the session's deadline hint to ``due_ms``."""
        async with self._guard():
            await self._redis.zadd(self._hint_key(session), {session: due_ms})

    async def claim_due(self, now_ms: int, lease_ms: int,
                        limit: int = 100) -> list[tuple[str, int]]:
        """Claim due hints: move each to a unique lease past ``now_ms + lease_ms``."""
        claimed: list[tuple[str, int]] = []
        # Start at another shard each time so a busy shard does not starve the others.
        start = self._next_shard
        self._next_shard = (start + 1) % HINT_SHARDS
        async with self._guard():
            if not self.is_cluster:
                # One round trip for all shards, each claiming its share of ``limit``.
                pipe: Any = self._redis.pipeline(transaction=False)
                for step in range(min(limit, HINT_SHARDS)):
                    share = limit // HINT_SHARDS + (step < limit % HINT_SHARDS)
                    await self._claim(keys=self._shard((start + step) % HINT_SHARDS),
                                      args=[now_ms, lease_ms, share], client=pipe)
                for reply in await pipe.execute():
                    claimed.extend((reply[i].decode(), int(reply[i + 1]))
                                   for i in range(0, len(reply), 2))
                return claimed
            for step in range(HINT_SHARDS):
                if len(claimed) >= limit:
                    break
                reply = await self._claim(keys=self._shard((start + step) % HINT_SHARDS),
                                          args=[now_ms, lease_ms, limit - len(claimed)])
                claimed.extend((reply[i].decode(), int(reply[i + 1]))
                               for i in range(0, len(reply), 2))
        return claimed

    async def settle_hint(self, session: str, lease: int, due_ms: int | None) -> None:
        """If the hint still equals ``lease``: set it to ``due_ms``, or remove it if None."""
        async with self._guard():
            await self._settle(keys=[self._hint_key(session)],
                               args=[session, lease, "" if due_ms is None else due_ms])

    async def ping(self) -> None:
        """Raise StoreUnavailable if Redis does not answer (or what answers is not Redis), and
        ConfigError if it refuses what the URL asks (a password, a database number)."""
        async with self._guard():
            try:
                await self._redis.ping()
            except RedisError as error:
                refused = _url_refused(error)
                if refused:
                    raise ConfigError(
                        f"Redis at {redact(self._url)} refused {refused} ("
                        f"{_first_line(error)}): correct {REDIS_URL_SETTING}") from None
                if isinstance(error, (RedisConnectionError, RedisTimeoutError)):
                    raise
                # Something answered that is not Redis: "not reachable" says it best.
                raise self._unavailable(error) from error

    async def connect(self, timeout: float = STARTUP_WAIT) -> None:
        """Wait until Redis answers: what may pass (refused, unreachable, loading, a cluster
        not formed yet) is retried for ``timeout`` seconds, saying so once, as the broker's
        connection does; what will not (a refused password, a database that does not exist)
        raises ConfigError at once. StoreUnavailable when the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        told = False
        while True:
            try:
                await self.ping()
                return
            except StoreUnavailable as error:
                left = deadline - loop.time()
                reason = _first_line(error.__cause__ or error)
                if left <= 0:
                    raise StoreUnavailable(
                        f"Redis is not reachable at {redact(self._url)} ({reason}) after "
                        f"trying for {timeout:g} s: start it or correct {REDIS_URL_SETTING}"
                    ) from None
                if not told:
                    told = True
                    logger.warning("event=redis_unreachable url=%s reason=%s; retrying for "
                                   "%g s", redact(self._url), reason, timeout)
                await asyncio.sleep(min(1.0, left))

    async def close(self) -> None:
        """Release connections."""
        if self._pipeliner is not None:
            await self._pipeliner.close()
        await self._redis.aclose()

    # -- tools ----------------------------------------------------------------------------

    async def history(self, session: str) -> list[bytes]:
        """The session's history entries, oldest first (empty when history is off)."""
        async with self._guard():
            found: list[Any] = await self._redis.lrange(
                self.session_keys(session)[3], 0, -1)
        return list(found)

    async def delete_session(self, session: str) -> bool:
        """Delete a session whole (record with its stack, waiting messages and timers,
        outbox, dedup memory, history) atomically; True if it existed."""
        async with self._guard():
            deleted = await self._delete(keys=self.session_keys(session))
            # The deadline hint sits on another slot; a stale one is dropped when it fires.
            await self._redis.zrem(self._hint_key(session), session)
        return bool(deleted)

    async def scan_records(self, limit: int) -> AsyncIterator[bytes]:
        """Up to ``limit`` stored session records, found by incremental SCAN (no call
        blocks Redis for long; on a cluster every primary is visited)."""
        if limit <= 0:
            return
        pattern = _escape_glob(self._ns) + ":{*}:r"
        found = 0
        async with self._guard():
            async for key in self._redis.scan_iter(match=pattern, count=200):
                blob: Any = await self._redis.hget(key, "b")
                if blob is None:
                    continue
                yield blob
                found += 1
                if found >= limit:
                    return

    async def ttl_ms(self, session: str) -> int:
        """Milliseconds until the session expires; -2 if it does not exist, -1 if it never does."""
        async with self._guard():
            return int(await self._redis.pttl(self.session_keys(session)[0]))

    async def note_queues(self, queues: Collection[str]) -> None:
        """Add queue names to the namespace's set of them (``NS:queues``)."""
        if not queues:
            return
        async with self._guard():
            await self._redis.sadd(self._queues_key, *queues)

    async def replicas(self, replica: str, now_ms: int, ttl_ms: int) -> list[str]:
        """Say ``replica`` is alive until ``now_ms + ttl_ms`` (``ttl_ms`` <= 0: gone now);
        return every replica alive at ``now_ms``, sorted (``NS:replicas``, a sorted set by
        the time each stops counting as alive)."""
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._replicas_key, "-inf", now_ms)
            if ttl_ms > 0:
                pipe.zadd(self._replicas_key, {replica: now_ms + ttl_ms})
                pipe.pexpire(self._replicas_key, ttl_ms * 10)  # the last one gone: no key
            else:
                pipe.zrem(self._replicas_key, replica)
            pipe.zrange(self._replicas_key, 0, -1)
            found: Any = (await pipe.execute())[-1]
        return sorted(r.decode() if isinstance(r, bytes) else str(r) for r in found)

    async def known_queues(self) -> set[str]:
        """The namespace's set of queue names."""
        async with self._guard():
            found: Any = await self._redis.smembers(self._queues_key)
        return {q.decode() if isinstance(q, bytes) else str(q) for q in found}

    async def records(self) -> AsyncIterator[bytes]:
        """Every stored session record of the namespace, in no order (tools)."""
        async with self._guard():
            async for key in self._redis.scan_iter(match=_escape_glob(self._ns) + ":{*}:r",
                                                   count=1000):
                blob: Any = await self._redis.hget(key, "b")
                if blob is not None:
                    yield blob.encode() if isinstance(blob, str) else bytes(blob)

    async def namespace_has_keys(self) -> bool:
        """Whether any key of the namespace exists (a scan that stops at the first)."""
        async with self._guard():
            async for _ in self._redis.scan_iter(match=_escape_glob(self._ns) + ":*",
                                                 count=1000):
                return True
        return False

    async def delete_namespace(self) -> int:
        """Delete every key of the namespace (tests, tools); return how many.

        On a cluster the scan visits every primary.
        """
        deleted = 0
        async with self._guard():
            batch: list[Any] = []
            async for key in self._redis.scan_iter(match=_escape_glob(self._ns) + ":*",
                                                   count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await self._unlink(batch)
                    batch = []
            if batch:
                deleted += await self._unlink(batch)
        return deleted

    async def _unlink(self, keys: list[Any]) -> int:
        # One UNLINK per key: a multi-key UNLINK fails across slots on Redis Cluster. Sent as
        # a raw command: the cluster pipeline's unlink() is a coroutine, not a queued command.
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("UNLINK", key)
        return sum(await pipe.execute())
