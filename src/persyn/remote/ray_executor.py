"""The Ray executor: generation and scoring batches run on Ray actors, one model replica per actor.

The driver alone touches the store: it sends batches to the replicas, collects results with `ray.wait` as they
finish and yields them to the pipeline, which commits each. Replicas are kept for the whole run (probe and
generate share a teacher's actors) and killed on close(); when the cluster has no room for the model needed
now, idle replicas of other models are released first, least recently used first.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from persyn.backends.base import GenRequest, GenResult, batched
from persyn.config import RunConfig, StudentConfig, TeacherConfig
from persyn.errors import ConfigError, PersynError

log = logging.getLogger(__name__)

IN_FLIGHT_PER_REPLICA = 2  # a queued batch keeps a replica busy while the driver commits the last one


class RaySettings(BaseModel):
    """The `ray:` section of a run config."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None  # None: a local Ray for this run; "auto", "host:port" or "ray://...": a cluster
    num_cpus: int | None = Field(default=None, gt=0)  # for a local Ray started here
    num_gpus: int | None = Field(default=None, ge=0)
    actor_num_cpus: float = Field(default=1.0, ge=0)
    actor_num_gpus: float = Field(default=0.0, ge=0)
    replicas: int = Field(default=1, gt=0)  # per teacher
    student_replicas: int = Field(default=1, gt=0)  # a scoring chunk is split across them
    batch_size: int | None = Field(default=None, gt=0)  # requests per task; None: the teacher's batch size
    runtime_env: dict[str, Any] | None = None  # passed to ray.init when this executor connects
    ready_timeout_s: float = Field(default=600.0, gt=0)  # how long to wait for a first replica to start

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RaySettings:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ConfigError(msg, key=".".join(["ray", *map(str, err["loc"])])) from None


class ModelWorker:
    """One model replica inside a Ray actor: a teacher backend or the student's learnability scorer."""

    def __init__(self, teacher: TeacherConfig | None, student: StudentConfig | None, batch_size: int,
                 dtype: str = "auto") -> None:
        self.teacher, self.student, self.batch_size, self.dtype = teacher, student, batch_size, dtype
        self.backend: Any = None

    def ready(self) -> bool:
        return True

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if self.backend is None:
            from persyn.backends.base import make_backend

            self.backend = make_backend(self.teacher, batch_size=self.batch_size, dtype=self.dtype)
        return list(self.backend.generate(requests))

    def learnability(self, prompts: list[str], responses: list[str]) -> Any:
        from persyn.scoring.student import student_learnability

        assert self.student is not None
        return student_learnability(self.student, prompts, responses)


@dataclass
class Pool:
    """The replicas of one model, with the refs of their `ready()` calls until each has started."""

    actors: list[Any]
    starting: dict[Any, int] = field(default_factory=dict)  # ready() ref -> actor index
    ready: list[int] = field(default_factory=list)
    last_used: float = 0.0


class RayExecutor:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.settings = RaySettings.parse(cfg.ray)
        try:
            import ray
        except ModuleNotFoundError:
            raise ConfigError("needs Ray: pip install 'persyn[ray]'", key="executor") from None
        self.ray = ray
        self.started_local = False
        self.worker_cls: Any = None  # set on first use: a run with nothing left to do never starts Ray
        self.pools: dict[str, Pool] = {}
        self.calls = 0  # generation requests sent, as LocalExecutor counts them
        self.tasks: dict[str, list[int]] = {}  # teacher name -> generation tasks sent to each replica

    def _connect(self) -> None:
        s, ray = self.settings, self.ray
        if ray.is_initialized():  # the caller's Ray: use it, leave it up
            self.worker_cls = ray.remote(ModelWorker)
            return
        address = s.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"runtime_env": s.runtime_env}
        if address is None:
            kwargs.update(address="local", num_cpus=s.num_cpus, num_gpus=s.num_gpus, include_dashboard=False)
            self.started_local = True
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            self.started_local = False
            raise ConfigError(f"cannot start or reach Ray at {address or 'local'}: {exc}",
                              key="ray.address") from None
        self.worker_cls = ray.remote(ModelWorker)

    # Pools ------------------------------------------------------------------------------------------------

    def _per_actor(self) -> dict[str, float]:
        s = self.settings
        return {k: v for k, v in (("CPU", s.actor_num_cpus), ("GPU", s.actor_num_gpus)) if v > 0}

    def _fitting(self, wanted: int) -> int:
        """How many more replicas the cluster has free resources for right now (at most `wanted`)."""
        free = self.ray.available_resources()
        need = self._per_actor()
        fit = [math.floor(free.get(k, 0.0) / v + 1e-9) for k, v in need.items()]
        return min([wanted, *fit])

    def _make_room(self, wanted: int, keep: str) -> int:
        """Release idle pools of other models (least recently used first) until `wanted` replicas fit."""
        fit = self._fitting(wanted)
        while fit < wanted:
            others = sorted((p.last_used, k) for k, p in self.pools.items() if k != keep)
            if not others:
                break
            key = others[0][1]
            freed = len(self.pools[key].actors)
            self._kill(key)
            deadline = time.monotonic() + 30
            target = min(wanted, fit + freed)
            while (fit := self._fitting(wanted)) < target and time.monotonic() < deadline:
                time.sleep(0.1)  # the cluster sees released resources a moment later
        return max(1, fit)

    def _pool(self, key: str, n: int, teacher: TeacherConfig | None = None,
              student: StudentConfig | None = None, batch_size: int = 8) -> Pool:
        if self.worker_cls is None:
            self._connect()
        if key not in self.pools:
            n = self._make_room(n, keep=key)
            s = self.settings
            cls = self.worker_cls.options(num_cpus=s.actor_num_cpus, num_gpus=s.actor_num_gpus, max_restarts=2)
            actors = [cls.remote(teacher, student, batch_size, self.cfg.generation.dtype) for _ in range(n)]
            self.pools[key] = Pool(actors, starting={a.ready.remote(): i for i, a in enumerate(actors)})
        pool = self.pools[key]
        pool.last_used = time.monotonic()
        return pool

    def _promote(self, pool: Pool, timeout: float = 0) -> None:
        """Move started replicas into `ready`; with a timeout, wait that long for at least one."""
        if not pool.starting:
            return
        done, _ = self.ray.wait(list(pool.starting), num_returns=1, timeout=timeout)
        if done:
            done, _ = self.ray.wait(list(pool.starting), num_returns=len(pool.starting), timeout=0)
        for ref in done:
            self._get(ref)
            pool.ready.append(pool.starting.pop(ref))
        if timeout and not pool.ready:
            s = self.settings
            raise ConfigError(
                f"no replica started within {s.ready_timeout_s:g}s; each needs {self._per_actor() or 'nothing'} "
                f"and the cluster has {self.ray.cluster_resources()} (see actor_num_cpus, actor_num_gpus)",
                key="ray")

    def _kill(self, key: str) -> None:
        for actor in self.pools.pop(key).actors:
            self.ray.kill(actor)

    def _get(self, ref: Any) -> Any:
        """ray.get, re-raising a worker's PersynError as itself so the CLI prints it as one line."""
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as exc:
            if isinstance(exc.cause, PersynError):
                raise exc.cause from None
            raise

    # Executor interface -------------------------------------------------------------------------------------

    def generate(self, teacher: TeacherConfig, requests: list[GenRequest]) -> Iterator[GenResult]:
        from ray.exceptions import RayActorError

        if not requests:
            return
        self.calls += len(requests)
        backend_batch = teacher.batch_size or self.cfg.generation.batch_size
        # Similar prompt lengths in one task, as the backend itself orders a batch: less padding.
        ordered = sorted(requests, key=lambda r: len(r.prompt))
        queue = list(batched(ordered, self.settings.batch_size or backend_batch))
        queue.reverse()  # pop() from the end takes the shortest first, like the local backend
        pool = self._pool(f"teacher:{teacher.model_dump_json()}", self.settings.replicas, teacher=teacher,
                          batch_size=backend_batch)
        running: dict[Any, tuple[int, list[GenRequest]]] = {}  # task ref -> (replica, batch)
        load = dict.fromkeys(range(len(pool.actors)), 0)
        tasks = self.tasks.setdefault(teacher.name, [])
        tasks += [0] * (len(pool.actors) - len(tasks))
        while queue or running:
            self._promote(pool, timeout=0 if running or pool.ready else self.settings.ready_timeout_s)
            for i in pool.ready:
                while queue and load[i] < IN_FLIGHT_PER_REPLICA:
                    batch = queue.pop()
                    running[pool.actors[i].generate.remote(batch)] = (i, batch)
                    load[i] += 1
                    tasks[i] += 1
            waiting = list(running) + list(pool.starting)
            done, _ = self.ray.wait(waiting, num_returns=1)
            if done[0] not in running:
                continue  # a replica started: the next round gives it work
            i, batch = running.pop(done[0])
            load[i] -= 1
            try:
                results = self._get(done[0])
            except RayActorError as exc:  # the replica died (out of memory, node lost): Ray restarts it
                reason = f"ray actor died: {str(exc).splitlines()[0]}"
                results = [GenResult(key=r.key, text=None, error=reason) for r in batch]
            pool.last_used = time.monotonic()
            yield from results

    def learnability(self, student: StudentConfig, prompts: list[str], responses: list[str]) -> Any:
        from ray.exceptions import RayActorError

        from persyn.scoring.learnability import LearnabilityResult

        if not prompts:
            return LearnabilityResult(values=[], truncated=0, tokens=0)
        pool = self._pool(f"student:{student.model_dump_json()}", self.settings.student_replicas, student=student)
        self._promote(pool, timeout=0 if pool.ready else self.settings.ready_timeout_s)
        replicas = [pool.actors[i] for i in pool.ready]
        size = math.ceil(len(prompts) / len(replicas))
        starts = list(range(0, len(prompts), size))
        refs = [actor.learnability.remote(prompts[j : j + size], responses[j : j + size])
                for actor, j in zip(replicas, starts, strict=False)]
        merged = LearnabilityResult(values=[], truncated=0, tokens=0)
        for j, ref in zip(starts, refs, strict=False):
            n = len(prompts[j : j + size])
            try:
                part = self._get(ref)
            except RayActorError as exc:  # the replica died: these scores are missing, for the next run
                part = LearnabilityResult(values=[None] * n, truncated=0, tokens=0, failed=list(range(n)),
                                          errors=[f"ray actor died: {str(exc).splitlines()[0]}"])
            merged.values += part.values
            merged.truncated += part.truncated
            merged.tokens += part.tokens
            merged.failed += [j + i for i in part.failed]
            merged.errors += part.errors
        pool.last_used = time.monotonic()
        return merged

    def release(self, teacher: TeacherConfig | None = None) -> None:
        """Replicas hold their own models; idle pools are reclaimed by `idle_timeout_s`."""

    def close(self) -> None:
        for key in list(self.pools):
            self._kill(key)
        if self.started_local:  # a cluster this run attached to (or a Ray the caller started) stays up
            self.ray.shutdown()
            self.started_local = False
