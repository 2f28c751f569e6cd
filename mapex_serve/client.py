"""A Python client for the jobs API: submit a scene (a file or a URL), follow its progress, download the results.

It needs only httpx (streaming uploads of large scenes) and tqdm (the progress bar), both small;
the service's own dependencies are not imported.

    >>> client = JobsClient("http://127.0.0.1:8000")
    >>> job = client.submit("flood", "S1_scene.tif")                       # or "https://.../S1.tif"
    >>> job = client.wait(job["id"])                                         # polls GET /jobs/{id}
    >>> client.download(job["id"], "flood.tif")                              # and format="geojson"
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

__all__ = ["JobFailedError", "JobsClient", "ServerAwayError"]

_FINISHED = ("done", "failed", "cancelled")
#: Answers that say "not now": a jobs server restarting or rolling out, as a serving replica passing /jobs on sees it.
_AWAY = (502, 503, 504)


class JobFailedError(RuntimeError):
    """The job ended failed or cancelled; the message is the service's error detail."""


class ServerAwayError(JobFailedError):
    """The server answered 502, 503 or 504, or could not be reached: worth asking again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobsClient:
    """One service's jobs API (``server``: its base URL); ``api_key`` when the service asks for one."""

    def __init__(self, server: str, api_key: str | None = None, timeout: float = 60) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("detail", body)
            except ValueError:
                detail = response.text
            if response.status_code in _AWAY:
                retry_after = response.headers.get("retry-after", "")
                raise ServerAwayError(f"{response.status_code}: {detail}",
                                      float(retry_after) if retry_after.isdigit() else None)
            raise JobFailedError(f"{response.status_code}: {detail}")
        return response

    def submit(self, task: str, scene: str | Path | list[str] | None, **options: Any) -> dict[str, Any]:
        """A job for ``scene``: a local file (streamed up), an http(s)/s3/gs URL, a list of URLs, or (None) a STAC
        item, a list of them or an ItemCollection (``options["stac_item"]``); ``options`` are the job's (bands,
        modality, probabilities, simplify, notify ...)."""
        remote = isinstance(scene, list) or (isinstance(scene, str) and scene.split("://", 1)[0] in (
            "http", "https", "s3", "gs"))
        if remote or "stac_item" in options:
            body = {**({"url": scene} if scene else {}), **options}
            return self._checked(self._http.post(f"/jobs/{task}", json=body)).json()
        path = Path(scene)
        fields = {k: str(v).lower() if isinstance(v, bool) else json.dumps(v) if isinstance(v, dict) else str(v)
                  for k, v in options.items() if v is not None}  # an aoi object goes as its GeoJSON text
        with path.open("rb") as f:  # the options as fields before the file: no URL bounds them (an aoi polygon)
            return self._checked(self._http.post(f"/jobs/{task}", data=fields,
                                                 files={"file": (path.name, f, "image/tiff")})).json()

    def status(self, job_id: str) -> dict[str, Any]:
        try:
            response = self._http.get(f"/jobs/{job_id}")
        except httpx.TransportError as e:
            raise ServerAwayError(f"{self._http.base_url} cannot be reached ({type(e).__name__}: {e})") from e
        return self._checked(response).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._checked(self._http.delete(f"/jobs/{job_id}")).json()

    def wait(self, job_id: str, poll_s: float = 1.0, on_progress: Callable[[dict[str, Any]], None] | None = None,
             timeout_s: float | None = None, outage_s: float = 600) -> dict[str, Any]:
        """Poll until the job ends; its final status, or :class:`JobFailedError` if it failed or was cancelled.

        A server that is away (restarting, rolling out) is waited for up to ``outage_s`` in a row: its
        jobs resume where they stopped when it is back, so following them should too.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        away_since: float | None = None
        while True:
            try:
                job = self.status(job_id)
            except ServerAwayError as e:
                away_since = away_since if away_since is not None else time.monotonic()
                if time.monotonic() - away_since > outage_s:
                    raise ServerAwayError(f"the server has been away for more than {outage_s:g} s ({e}); job "
                                          f"{job_id} may still finish: ask for it later") from e
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not finished after {timeout_s:g} s; the server is away ({e})") from e
                time.sleep(e.retry_after_s if e.retry_after_s is not None else poll_s)
                continue
            away_since = None
            if on_progress is not None:
                on_progress(job)
            if job["state"] in _FINISHED:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout_s:g} s")
            time.sleep(poll_s)
        if job["state"] != "done":
            detail = (job.get("error") or {}).get("detail", job["state"])
            raise JobFailedError(f"job {job_id} {job['state']}: {detail}")
        return job

    def download(self, job_id: str, out: str | Path, format: str = "geotiff") -> Path:
        """One result written to ``out`` as it streams (a whole scene's COG can be large)."""
        out = Path(out)
        with self._http.stream("GET", f"/jobs/{job_id}/result", params={"format": format}) as response:
            if response.status_code >= 400:
                response.read()
                self._checked(response)
            tmp = out.with_name(out.name + ".part")
            with tmp.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            tmp.replace(out)
        return out


def run_predict(scene: str, task: str, out: str, geojson: str | None, server: str, api_key: str | None,
                options: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """The CLI's ``predict``: submit, follow with a progress bar, download; the final job status."""
    from tqdm import tqdm

    with JobsClient(server, api_key) as client:
        if geojson:
            options = {**options, "geojson": True}
        job = client.submit(task, scene, **options)
        bar = tqdm(total=0, unit="tile", desc=f"{task} job {job['id'][:8]}", disable=quiet)

        def show(status: dict[str, Any]) -> None:
            p = status["progress"]
            if p["tiles_total"] and bar.total != p["tiles_total"]:
                bar.total = p["tiles_total"]
            bar.n = p["tiles_done"]
            bar.set_postfix_str(status["state"])
            bar.refresh()

        try:
            job = client.wait(job["id"], on_progress=show)
        except KeyboardInterrupt:
            client.cancel(job["id"])
            raise
        finally:
            bar.close()
        client.download(job["id"], out, "geotiff")
        if geojson:
            client.download(job["id"], geojson, "geojson")
        return job
