"""The jobs client against a real HTTP server on loopback that answers from a script: a server that is
away for a while (restarting, rolling out) is waited for, as its jobs resume; anything else is reported."""

import email
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mapex_serve.client import JobFailedError, JobsClient, ServerAwayError
from mapex_serve.local import free_port


class ScriptedJobs:
    """``GET /jobs/{id}`` answered with the next (status, state) of ``script``; the last one repeats."""

    def __init__(self, script: list[tuple[int, str]]) -> None:
        self.script, self.port, self.asked = list(script), free_port(), 0
        self.posted: list[str] = []  # the paths of the POSTs, query strings included
        self.bodies: list[tuple[str, bytes]] = []  # their Content-Type and body
        self.server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        jobs = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                jobs.posted.append(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                jobs.bodies.append((self.headers.get("Content-Type", ""), body))
                body = json.dumps({"id": "abc", "state": "queued"}).encode()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                status, state = jobs.script.pop(0) if len(jobs.script) > 1 else jobs.script[0]
                jobs.asked += 1
                body = json.dumps({"id": "abc", "state": state} if status == 200 else {"detail": state}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:  # once per start: shutdown() would wait forever on a server already stopped
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def scripted() -> Iterator[list[ScriptedJobs]]:
    servers: list[ScriptedJobs] = []
    yield servers
    for s in servers:
        s.stop()


def test_following_a_job_rides_out_a_server_that_is_away(scripted):
    jobs = ScriptedJobs([(503, "jobs server down"), (502, "bad gateway"), (200, "running"), (504, "slow"),
                         (200, "done")])
    scripted.append(jobs)
    seen: list[str] = []
    jobs.stop()  # refused connections first, for half a second
    threading.Timer(0.5, jobs.start).start()
    with JobsClient(f"http://127.0.0.1:{jobs.port}") as client:
        job = client.wait("abc", poll_s=0.05, on_progress=lambda j: seen.append(j["state"]), outage_s=30)
    assert job["state"] == "done" and seen == ["running", "done"]
    assert jobs.asked == 5


def test_an_outage_longer_than_outage_s_is_reported_and_a_real_error_at_once(scripted):
    scripted.append(away := ScriptedJobs([(503, "jobs server down")]))
    with JobsClient(f"http://127.0.0.1:{away.port}") as client:
        began = time.monotonic()
        with pytest.raises(ServerAwayError, match="away for more than 0.3 s .*jobs server down"):
            client.wait("abc", poll_s=0.05, outage_s=0.3)
        assert 0.3 <= time.monotonic() - began < 5
    scripted.append(gone := ScriptedJobs([(404, "no job 'abc'")]))
    with JobsClient(f"http://127.0.0.1:{gone.port}") as client:
        with pytest.raises(JobFailedError, match="404: no job") as raised:
            client.wait("abc", poll_s=0.05)
        assert not isinstance(raised.value, ServerAwayError) and gone.asked == 1


def test_an_uploads_options_go_as_fields_before_its_file_with_an_aoi_as_geojson_text(scripted, tmp_path):
    """An upload's options went in its query string, where a polygon of thousands of vertices does not fit (httpx
    refuses a URL over 64 KiB): the job could not be sent. They go as multipart fields before the file now, an aoi
    object as its GeoJSON text (not Python's repr of a dict)."""
    scripted.append(server := ScriptedJobs([(200, "queued")]))
    scene = tmp_path / "s1.tif"
    scene.write_bytes(b"II*\0")
    ring = [[10 + i * 1e-5, 45 + (i % 2) * 1e-5] for i in range(5000)]
    aoi = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    with JobsClient(f"http://127.0.0.1:{server.port}") as client:
        client.submit("flood", scene, aoi=aoi, probabilities=True, simplify=2.5, bands=None)
    assert server.posted == ["/jobs/flood"]
    content_type, body = server.bodies[0]
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
             for part in message.get_payload()}
    assert list(parts) == ["aoi", "probabilities", "simplify", "file"]
    assert json.loads(parts["aoi"]) == aoi and parts["probabilities"] == b"true" and parts["simplify"] == b"2.5"
    assert parts["file"] == b"II*\0"
