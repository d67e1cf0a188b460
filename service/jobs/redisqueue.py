"""The Redis backend: arq delivers jobs to `python -m service.worker` processes; records live beside it.

arq (asyncio, like the service) does the queueing: a job stays in its sorted set until a worker
finishes it ("pessimistic execution"), a per-job in-progress key stops two workers from starting it
at once, and when that key runs out the job is delivered again — how a SIGKILLed worker's job gets
retried. arq sets that key once per start, for the longest job timeout (our deadlines: up to an
hour), with no heartbeat; so the worker keeps it at `job_lease_s` while the job runs
(`heartbeat`) and a dead worker's job is retried within seconds instead of after the deadline.

What arq does not do is done here, in Lua scripts so every step is atomic across pods: the job
record (a hash: state, progress, choice, timings, error), the input and result bytes (TTL'd keys,
counted against `max_stored_bytes`), the cap on queued jobs, and transitions fenced by the attempt
number: a worker that lost its lease cannot overwrite the job, and the terminal state is written
exactly once. arq only ever carries the job id.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name, in_progress_key_prefix
from redis.exceptions import RedisError

from service.errors import Unavailable
from service.jobs.base import Claim, JobQueue, QueueStats, queue_full
from service.jobs.model import JobRecord, JobState
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "elasticsr:"
QUEUED = PREFIX + "queued"  # zset: job id -> enqueue time (not started yet)
RUNNING = PREFIX + "running"  # zset: job id -> start time of the current attempt
PREDICTED = PREFIX + "predicted"  # hash: job id -> predicted compute seconds (queued and running)
WORKERS = PREFIX + "workers"  # zset: worker name -> last heartbeat
STORED = PREFIX + "stored"  # hash: "in:<id>" | "out:<id>" -> bytes held, and "total"
STORED_EXPIRY = PREFIX + "stored-expiry"  # zset: "out:<id>" -> when its result key expires
JOB_FUNCTION = "render_job"

# Shared by the scripts: give back the bytes of results whose keys have expired by `now`.
_RECLAIM = """
local function reclaim(now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, member in ipairs(gone) do
    local n = tonumber(redis.call('HGET', KEYS[1], member) or '0')
    redis.call('HINCRBY', KEYS[1], 'total', -n)
    redis.call('HDEL', KEYS[1], member)
  end
  if #gone > 0 then redis.call('ZREM', KEYS[2], unpack(gone)) end
end
local function drop_input(id)
  local n = tonumber(redis.call('HGET', KEYS[1], 'in:' .. id) or '0')
  redis.call('HINCRBY', KEYS[1], 'total', -n)
  redis.call('HDEL', KEYS[1], 'in:' .. id)
  redis.call('DEL', 'elasticsr:job:' .. id .. ':input')
end
local function unlist(id)
  redis.call('ZREM', 'elasticsr:queued', id)
  redis.call('ZREM', 'elasticsr:running', id)
  redis.call('HDEL', 'elasticsr:predicted', id)
end
"""

# KEYS: stored, stored-expiry. ARGV: id, now, max_jobs, max_bytes, input ttl, predicted, input, field pairs…
_SUBMIT = (
    _RECLAIM
    + """
local id, now = ARGV[1], tonumber(ARGV[2])
reclaim(now)
local depth = redis.call('ZCARD', 'elasticsr:queued')
if depth >= tonumber(ARGV[3]) then return {'full', depth} end
local size = string.len(ARGV[7])
if tonumber(redis.call('HGET', KEYS[1], 'total') or '0') + size > tonumber(ARGV[4]) then
  return {'bytes', depth}
end
local job = 'elasticsr:job:' .. id
redis.call('HSET', job, unpack(ARGV, 8))
redis.call('SET', job .. ':input', ARGV[7], 'EX', ARGV[5])
redis.call('EXPIRE', job, ARGV[5])
redis.call('HINCRBY', KEYS[1], 'total', size)
redis.call('HSET', KEYS[1], 'in:' .. id, size)
redis.call('ZADD', 'elasticsr:queued', now, id)
redis.call('HSET', 'elasticsr:predicted', id, ARGV[6])
return {'ok', depth + 1}
"""
)

# ARGV: id, now, worker, max attempts, ttl. Returns {state, attempt}.
_CLAIM = (
    _RECLAIM
    + """
local id, now = ARGV[1], tonumber(ARGV[2])
local job = 'elasticsr:job:' .. id
local state = redis.call('HGET', job, 'state')
if state ~= 'queued' and state ~= 'running' then return {state or 'missing', 0} end
local attempt = redis.call('HINCRBY', job, 'attempts', 1)
if attempt > tonumber(ARGV[4]) then
  redis.call('HSET', job, 'state', 'failed', 'stage', 'done', 'finished_at', ARGV[2],
    'error_code', 'worker_lost',
    'error_message', 'the job was started ' .. (attempt - 1) .. ' times and its worker was lost each time')
  redis.call('HINCRBY', job, 'ends', 1)
  redis.call('EXPIRE', job, ARGV[5])
  unlist(id)
  drop_input(id)
  return {'failed', attempt}
end
redis.call('HSET', job, 'state', 'running', 'stage', 'queued', 'worker', ARGV[3], 'started_at', ARGV[2])
redis.call('ZREM', 'elasticsr:queued', id)
redis.call('ZADD', 'elasticsr:running', now, id)
return {'running', attempt}
"""
)

# ARGV: id, attempt, field pairs… Returns the cancel flag, or -1 when this attempt lost the job.
_UPDATE = """
local job = 'elasticsr:job:' .. ARGV[1]
if redis.call('HGET', job, 'state') ~= 'running' or redis.call('HGET', job, 'attempts') ~= ARGV[2] then
  return -1
end
if #ARGV > 2 then redis.call('HSET', job, unpack(ARGV, 3)) end
if redis.call('HGET', job, 'cancel_requested') == '1' then return 1 end
return 0
"""

# KEYS: stored, stored-expiry. ARGV: id, attempt, state, now, ttl, max bytes, result, field pairs…
_FINISH = (
    _RECLAIM
    + """
local id, now = ARGV[1], tonumber(ARGV[4])
local job = 'elasticsr:job:' .. id
if redis.call('HGET', job, 'state') ~= 'running' or redis.call('HGET', job, 'attempts') ~= ARGV[2] then
  return false
end
reclaim(now)
drop_input(id)
local state = ARGV[3]
if #ARGV > 7 then redis.call('HSET', job, unpack(ARGV, 8)) end
if state == 'succeeded' and redis.call('HGET', job, 'cancel_requested') == '1' then
  state = 'cancelled'
  redis.call('HSET', job, 'error_code', 'cancelled', 'error_message', 'cancelled by the client')
elseif state == 'succeeded' then
  local size = string.len(ARGV[7])
  if tonumber(redis.call('HGET', KEYS[1], 'total') or '0') + size > tonumber(ARGV[6]) then
    state = 'failed'
    redis.call('HSET', job, 'error_code', 'result_too_large',
      'error_message', 'no room for the result within ELASTICSR_MAX_STORED_BYTES; try again later')
    redis.call('HDEL', job, 'result_bytes')
  else
    redis.call('SET', job .. ':result', ARGV[7], 'EX', ARGV[5])
    redis.call('HINCRBY', KEYS[1], 'total', size)
    redis.call('HSET', KEYS[1], 'out:' .. id, size)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), 'out:' .. id)
  end
end
redis.call('HSET', job, 'state', state)
redis.call('HINCRBY', job, 'ends', 1)
redis.call('EXPIRE', job, ARGV[5])
unlist(id)
return state
"""
)

# KEYS: stored, stored-expiry. ARGV: id, now, ttl. Returns the state after.
_CANCEL = (
    _RECLAIM
    + """
local id = ARGV[1]
local job = 'elasticsr:job:' .. id
local state = redis.call('HGET', job, 'state')
if state == 'queued' then
  redis.call('HSET', job, 'state', 'cancelled', 'stage', 'done', 'finished_at', ARGV[2],
    'error_code', 'cancelled', 'error_message', 'cancelled by the client')
  redis.call('HINCRBY', job, 'ends', 1)
  redis.call('EXPIRE', job, ARGV[3])
  unlist(id)
  drop_input(id)
  return 'cancelled'
end
if state == 'running' then redis.call('HSET', job, 'cancel_requested', '1') end
return state or false
"""
)

# KEYS: stored, stored-expiry. ARGV: now, ttl. Expires queued jobs past their deadline; their ids.
_SWEEP = (
    _RECLAIM
    + """
local now = tonumber(ARGV[1])
reclaim(now)
local expired = {}
for _, id in ipairs(redis.call('ZRANGE', 'elasticsr:queued', 0, -1)) do
  local job = 'elasticsr:job:' .. id
  local deadline = tonumber(redis.call('HGET', job, 'deadline_at') or '0')
  if redis.call('EXISTS', job) == 0 then
    unlist(id)
    drop_input(id)
  elseif deadline <= now then
    redis.call('HSET', job, 'state', 'expired', 'stage', 'done', 'finished_at', ARGV[1],
      'error_code', 'deadline_expired',
      'error_message', 'the deadline passed while the job waited in the queue')
    redis.call('HINCRBY', job, 'ends', 1)
    redis.call('EXPIRE', job, ARGV[2])
    unlist(id)
    drop_input(id)
    table.insert(expired, id)
  end
end
return expired
"""
)


def _pairs(fields: dict[str, str]) -> list[str]:
    return [x for kv in fields.items() for x in kv]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class RedisQueue(JobQueue):
    """Job records, bytes and delivery in Redis 7, shared by every API and worker process."""

    def __init__(self, settings: Settings, metrics: Metrics, pool: ArqRedis) -> None:
        super().__init__(metrics)
        self.settings = settings
        self.redis = pool
        self._scripts = {
            name: pool.register_script(src)
            for name, src in {
                "submit": _SUBMIT,
                "claim": _CLAIM,
                "update": _UPDATE,
                "finish": _FINISH,
                "cancel": _CANCEL,
                "sweep": _SWEEP,
            }.items()
        }

    @classmethod
    async def connect(cls, settings: Settings, metrics: Metrics) -> RedisQueue:
        """Connect, or start without Redis: the sync path must serve while Redis is away.

        When Redis cannot be reached now, the client connects lazily on its first call; until Redis
        is back every queue call answers 503 `queue_unavailable` and maintenance keeps retrying.
        """
        try:
            pool = await create_pool(
                RedisSettings.from_dsn(settings.redis_url), retry=2, default_queue_name=default_queue_name
            )
        except (RedisError, OSError) as exc:
            log.warning("job queue (Redis) unreachable at start, will retry on use: %s", exc)
            pool = ArqRedis.from_url(settings.redis_url, encoding="utf8")
            pool.default_queue_name = default_queue_name
        return cls(settings, metrics, pool)

    @property
    def ttl(self) -> int:
        return max(1, math.ceil(self.settings.result_ttl_s))

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis call; Redis away becomes a 503 `queue_unavailable` for the API."""
        try:
            return await fn()
        except RedisError as exc:
            raise Unavailable(
                f"the job queue (Redis) cannot be reached: {exc}", code="queue_unavailable", retry_after_s=5
            ) from exc

    async def _script(
        self, name: str, args: list[Any], keys: tuple[str, ...] = (STORED, STORED_EXPIRY)
    ) -> Any:
        return await self._call(lambda: self._scripts[name](keys=list(keys), args=args))

    # --- API side ---------------------------------------------------------------------------------
    async def submit(self, record: JobRecord, data: bytes) -> None:
        now = time.time()
        input_ttl = math.ceil(record.deadline_at - now) + self.ttl
        args = [
            record.id,
            now,
            self.settings.max_jobs,
            self.settings.max_stored_bytes,
            input_ttl,
            record.predicted_seconds or 0.0,
            data,
            *_pairs(record.to_fields()),
        ]
        status, depth = await self._script("submit", args)
        if status == b"full":
            raise queue_full(int(depth), await self.stats())
        if status == b"bytes":
            raise Unavailable(
                "the job store is full (ELASTICSR_MAX_STORED_BYTES); try again when results have expired",
                code="overloaded",
                reason="queue_full",
                retry_after_s=max(1.0, (await self.stats()).backlog_seconds),
                detail={"reason": "queue_full"},
            )
        try:
            await self._enqueue(record.id, input_ttl)
        except Exception:  # not delivered: take the job back so the client is not told 202 for nothing
            await self._script("cancel", [record.id, now, 1])
            raise

    async def _enqueue(self, job_id: str, expires_s: float) -> None:
        # Idempotent by job id: arq refuses a second job with the same id while one exists.
        await self._call(
            lambda: self.redis.enqueue_job(JOB_FUNCTION, job_id, _job_id=job_id, _expires=expires_s)
        )

    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self._call(lambda: self.redis.hgetall(f"{PREFIX}job:{job_id}"))
        if not fields:
            return None
        return JobRecord.from_fields({k.decode(): v.decode() for k, v in fields.items()})

    async def result(self, job_id: str) -> bytes | None:
        return await self._call(lambda: self.redis.get(f"{PREFIX}job:{job_id}:result"))

    async def cancel(self, job_id: str) -> JobRecord | None:
        state = await self._script("cancel", [job_id, time.time(), self.ttl])
        if state == b"cancelled":
            self.ended(JobState.CANCELLED)
        return await self.get(job_id)

    async def stats(self) -> QueueStats:
        now = time.time()

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrange(QUEUED, 0, -1, withscores=True)
                pipe.zrange(RUNNING, 0, -1, withscores=True)
                pipe.hgetall(PREDICTED)
                pipe.zcount(WORKERS, now - self.settings.job_lease_s, "+inf")
                return await pipe.execute()

        queued, running, predicted, workers = await self._call(read)
        owed = {k.decode(): float(v) for k, v in predicted.items()}
        backlog = sum(owed.get(i.decode(), 0.0) for i, _ in queued)
        backlog += sum(max(0.0, owed.get(i.decode(), 0.0) - (now - started)) for i, started in running)
        return QueueStats(
            depth=len(queued),
            running=len(running),
            workers=int(workers),
            backlog_seconds=backlog,
            oldest_age_seconds=now - queued[0][1] if queued else 0.0,
        )

    async def sweep(self) -> None:
        expired = await self._script("sweep", [time.time(), self.ttl])
        self.ended(JobState.EXPIRED, len(expired))
        await self.redeliver()

    async def redeliver(self) -> None:
        """Hand arq again any unfinished job it no longer holds (lost between our write and arq's)."""
        ids = [
            i
            for key in (QUEUED, RUNNING)
            for i in await self._call(lambda k=key: self.redis.zrange(k, 0, -1))
        ]
        for job_id in ids:
            listed = await self._call(lambda i=job_id: self.redis.zscore(default_queue_name, i))
            started = await self._call(lambda i=job_id: self.redis.zscore(RUNNING, i))
            if listed is None and (started is None or time.time() - started > self.settings.job_lease_s):
                log.warning("job %s: not in arq's queue, delivering it again", job_id.decode())
                await self._enqueue(job_id.decode(), self.ttl + self.settings.max_job_deadline_ms / 1000)

    # --- worker side ------------------------------------------------------------------------------
    async def claim(self, job_id: str, worker: str) -> Claim | None:
        args = [job_id, time.time(), worker, self.settings.job_max_attempts, self.ttl]
        state, attempt = await self._script("claim", args)
        if state == b"failed":
            self.ended(JobState.FAILED)
            log.error("job %s: failed after %d lost workers", job_id, int(attempt) - 1)
        if state != b"running":
            return None
        data = await self._call(lambda: self.redis.get(f"{PREFIX}job:{job_id}:input"))
        record = await self.get(job_id)
        if record is None:
            return None
        if data is None:  # its TTL (deadline + result TTL) ran out: nothing to render
            await self.finish(
                job_id,
                int(attempt),
                JobState.FAILED,
                {"error_code": "input_lost", "error_message": "the job's input expired before it ran"},
            )
            return None
        return Claim(record, data, int(attempt))

    async def update(self, job_id: str, attempt: int, fields: dict[str, object]) -> bool:
        args = [job_id, attempt, *_pairs({k: _text(v) for k, v in fields.items()})]
        return await self._script("update", args, keys=()) == 0

    async def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        fields: dict[str, object],
        result: bytes | None = None,
    ) -> JobState | None:
        args = [
            job_id,
            attempt,
            state.value,
            time.time(),
            self.ttl,
            self.settings.max_stored_bytes,
            result if result is not None else b"",
            *_pairs({k: _text(v) for k, v in fields.items()}),
        ]
        final = await self._script("finish", args)
        if final is None:
            return None
        ended = JobState(final.decode())
        self.ended(ended)
        return ended

    async def heartbeat(self, worker: str, job_ids: list[str]) -> None:
        """Say this worker lives, and keep its jobs' arq in-progress keys at the lease."""
        lease_ms = int(self.settings.job_lease_s * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(WORKERS, {worker: time.time()})
            pipe.zremrangebyscore(WORKERS, "-inf", time.time() - 10 * self.settings.job_lease_s)
            for job_id in job_ids:
                pipe.pexpire(in_progress_key_prefix + job_id, lease_ms)
            await pipe.execute()

    async def leave(self, worker: str) -> None:
        await self.redis.zrem(WORKERS, worker)

    async def close(self) -> None:
        await self.redis.aclose()
