"""The FastAPI application: an app factory whose lifespan opens and warms the engines.

Routes live in one router per concern (``mapex_serve/routes/``): health and metrics, models with
the Open Inference Protocol, predict, jobs; ``routes/lane.py`` sends the hot ones (predict, infer)
past FastAPI's middleware and routing; ``routes/jobs_proxy.py`` passes ``/jobs`` on to the server
that runs the jobs when ``MAPEX_JOBS_URL`` names one. They share a ``ServiceState`` on ``app.state.mapex``. Every
error the service raises on purpose is a MapexError, mapped to an HTTP status in one handler
(``http_errors``) with a message that says what was wrong and what would be accepted.
"""

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from mapex_serve import heap
from mapex_serve.batcher import Batcher, request_ahead
from mapex_serve.cores import service_processes
from mapex_serve.decode.pool import DecodePool
from mapex_serve.decode.slab import batch_bytes
from mapex_serve.errors import MapexError
from mapex_serve.http_errors import STATUS, mapex_error_response, status_of
from mapex_serve.jobs.runner import JobRunner
from mapex_serve.jobs.store import SQLiteJobStore
from mapex_serve.registry import Registry
from mapex_serve.routes import health, jobs, models, predict
from mapex_serve.routes.jobs_proxy import JobsProxy
from mapex_serve.routes.lane import FastLane
from mapex_serve.settings import Settings
from mapex_serve.state import ServiceState

__all__ = ["STATUS", "create_app", "status_of"]

log = logging.getLogger("mapex_serve")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service over ``settings.model_repo``; engines open and warm up in the lifespan."""
    state = ServiceState(settings or Settings())
    executors: list[ThreadPoolExecutor] = []
    jobs_proxy = JobsProxy(state.settings.jobs_url, state.settings.request_timeout_s) if state.settings.jobs_url else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        s = state.settings
        registry = await run_in_threadpool(Registry.load, s, warm_up=False)
        for r in registry.refused:
            log.warning("refused %s: %s", r.entry, r.reason)
        state.registry = registry
        await run_in_threadpool(registry.warm_up)
        # Engine threads of their own per specialist (MAPEX_ENGINE_RUNNERS): a slow specialist never holds up
        # the others (ONNX Runtime's own thread settings share the cores between them).
        executors[:] = [ThreadPoolExecutor(spec.engine.threads.runners, thread_name_prefix=f"engine-{name}")
                        for name, spec in registry.specialists.items()]
        state.batchers = {
            name: Batcher(name, spec.engine.run, executor, max_batch=s.max_batch, max_delay_ms=s.max_delay_ms,
                          max_queue=s.max_queue, metrics=state.metrics, runners=spec.engine.threads.runners,
                          ahead=request_ahead(spec.engine.threads.runners,
                                              sum(batch_bytes(spec.manifest, s.max_batch))),
                          run_into=spec.engine.run_into)
            for (name, spec), executor in zip(registry.specialists.items(), executors, strict=True)
        }
        for b in state.batchers.values():
            b.start()
        if s.decode_worker_count > 0:
            state.decode = DecodePool(s.decode_worker_count, {n: sp.manifest for n, sp in registry.specialists.items()},
                                      {n: sp.engine.provider for n, sp in registry.specialists.items()},
                                      metrics=state.metrics, max_holding=s.max_decoding * s.decode_worker_count,
                                      shm=s.shm_dir,
                                      runners={n: sp.engine.threads.runners for n, sp in registry.specialists.items()},
                                      predict_parts=s.predict_parts)
            await state.decode.start()
        state.jobs = _open_jobs(state) if jobs_proxy is None else None
        heap.settle()
        log.info("ready: %d specialists (%s)", len(registry.specialists), ", ".join(registry.specialists))
        yield
        if state.jobs is not None:  # running jobs stop where they are and resume on the next start
            await state.jobs.stop()
        # Every admitted tile is run or answered with a 503, the specialists draining side by side.
        await asyncio.gather(*(b.stop(drain_s=s.request_timeout_s) for b in state.batchers.values()))
        if state.decode is not None:
            await state.decode.stop()
        for executor in executors:
            executor.shutdown(wait=True)
        if jobs_proxy is not None:
            await jobs_proxy.aclose()

    app = MapexApp(title="mapex-serve", version="0.1.0", lifespan=lifespan,
                   description="Routes each uploaded GeoTIFF by its band metadata to the matching MAPEX specialist.")
    app.state.mapex = state
    app.add_exception_handler(MapexError, mapex_error_response)
    app.lane = FastLane([predict.PREDICT_LANE, models.INFER_LANE])  # the hot paths (routes/lane.py)
    app.jobs_proxy = jobs_proxy  # MAPEX_JOBS_URL: /jobs go to the server that runs them (routes/jobs_proxy.py)
    for router in (health.router, models.router, predict.router, jobs.router):
        app.include_router(router)
    return app


class MapexApp(FastAPI):
    """FastAPI whose hot routes (``routes/lane.py``) and passed-on ``/jobs`` are answered before its middleware stack."""

    lane = FastLane([])
    jobs_proxy: JobsProxy | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.jobs_proxy is not None and await self.jobs_proxy.take(self, scope, receive, send):
            return
        if not await self.lane.take(self, scope, receive, send):
            await super().__call__(scope, receive, send)


def _open_jobs(state: ServiceState) -> JobRunner | None:
    """The jobs runner over its store; without a writable jobs folder the service still serves /predict.

    One process runs a store's jobs: several (``UVICORN_WORKERS``) would each requeue and start the
    same ones, and cancel only their own.
    """
    folder = state.settings.jobs_folder
    if (processes := service_processes()) > 1:
        state.jobs_problem = (f"UVICORN_WORKERS={processes} service processes would each run the same queue of jobs; "
                              f"serve jobs from a deployment of one service process")
        log.warning("jobs disabled: %s", state.jobs_problem)
        return None
    try:
        runner = JobRunner(state, SQLiteJobStore(folder))
    except (OSError, sqlite3.Error) as e:
        state.jobs_problem = (f"the jobs folder {folder} could not be opened for writing ({e}); set MAPEX_JOBS_DIR "
                              f"to a writable volume")
        log.warning("jobs disabled: %s", state.jobs_problem)
        return None
    runner.start()
    state.metrics.watch_jobs(runner.store.counts)
    return runner
