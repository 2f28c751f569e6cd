"""A replica with ``MAPEX_JOBS_URL`` set: what it answers by itself (key, jobs server down, other paths).

Jobs passed on to a real jobs server, end to end, are in test_jobs.py
(``test_replicas_that_run_no_jobs_pass_them_to_the_one_that_does``).
"""

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pydantic
import pytest

from mapex_serve.app import create_app
from mapex_serve.local import free_port
from mapex_serve.settings import Settings


def ask(settings: Settings, method: str, path: str, client: tuple[str, int] = ("127.0.0.1", 123),
        **kw) -> httpx.Response:
    """One request to the app in this process from ``client`` (no lifespan: nothing here needs the engines)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings), client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client_:
            return await client_.request(method, path, **kw)

    return asyncio.run(go())


@pytest.fixture
def nobody_listens(tmp_path) -> Settings:
    """A replica whose jobs server is down: a loopback port nobody listens on."""
    return Settings(model_repo=tmp_path / "models", jobs_url=f"http://127.0.0.1:{free_port()}/")


def test_a_jobs_server_that_is_down_gives_503_with_retry_after_and_its_address(nobody_listens):
    for method, path in [("GET", "/jobs"), ("GET", "/jobs/abc123"), ("POST", "/jobs/flood")]:
        r = ask(nobody_listens, method, path, json={"url": "https://example.com/s1.tif"} if method == "POST" else None)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (method, path, r.text)
        detail = r.json()["detail"]
        assert nobody_listens.jobs_url in detail and "retry" in detail, detail
        assert not nobody_listens.jobs_url.endswith("/")


def test_the_key_is_checked_before_anything_is_passed_on(nobody_listens):
    keyed = nobody_listens.model_copy(update={"api_key": pydantic.SecretStr("s3cret")})
    r = ask(keyed, "GET", "/jobs")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    r = ask(keyed, "GET", "/jobs", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 503, "with the key, the request went on to the (absent) jobs server"


def test_two_servers_that_pass_jobs_to_each_other_get_508_not_a_loop(nobody_listens):
    r = ask(nobody_listens, "GET", "/jobs", headers={"Via": "1.1 some-gateway, 1.1 mapex-serve"})
    assert r.status_code == 508 and "unset MAPEX_JOBS_URL" in r.json()["detail"], r.text


def test_only_jobs_paths_are_passed_on(nobody_listens):
    assert ask(nobody_listens, "GET", "/healthz").status_code == 200
    assert ask(nobody_listens, "GET", "/jobsearch").status_code == 404
    assert ask(nobody_listens, "GET", "/openapi.json").json()["paths"]["/jobs/{task}"], "jobs stay documented"


def test_a_jobs_url_must_be_http(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="http://mapex-jobs"):
        Settings(model_repo=tmp_path, jobs_url="mapex-jobs:80")
    assert Settings(model_repo=tmp_path, jobs_url=" ").jobs_url is None


@pytest.fixture
def echoing(tmp_path) -> Iterator[Settings]:
    """A replica whose jobs server is a real HTTP server on loopback answering every GET with the headers it got."""

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Settings(model_repo=tmp_path / "models", jobs_url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_the_jobs_server_hears_who_asked_and_at_which_address(echoing):
    seen = ask(echoing, "GET", "/jobs", client=("203.0.113.9", 50000)).json()
    assert seen["x-forwarded-for"] == "203.0.113.9"
    assert (seen["x-forwarded-proto"], seen["x-forwarded-host"]) == ("http", "replica")
    assert seen["via"] == "1.1 mapex-serve"

    # Behind a proxy: its chain goes on, and what it said of the client's scheme and address stays.
    seen = ask(echoing, "GET", "/jobs", client=("10.1.2.3", 50000), headers={
        "X-Forwarded-For": "198.51.100.7, 192.0.2.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "eo.example"}).json()
    assert seen["x-forwarded-for"] == "198.51.100.7, 192.0.2.1, 10.1.2.3"
    assert (seen["x-forwarded-proto"], seen["x-forwarded-host"]) == ("https", "eo.example")

    # A proxy uvicorn trusts (FORWARDED_ALLOW_IPS): uvicorn took the client from the chain's end. Not added twice.
    seen = ask(echoing, "GET", "/jobs", client=("198.51.100.7", 50000), headers={"X-Forwarded-For": "198.51.100.7"})
    assert seen.json()["x-forwarded-for"] == "198.51.100.7"
