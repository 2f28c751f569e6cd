"""The POST that tells a job's notify URL the job ended: tried again while the receiver fails, not when it answers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket

import pytest

from mapex_serve.jobs.models import JobRequestError
from mapex_serve.jobs.notify import checked_notify_url, notify

STATUS = {"id": "3f2a", "state": "failed", "results": {}}


def test_a_receiver_that_answers_4xx_is_not_asked_again_and_one_that_fails_is(webhook):
    refusing = webhook([410])
    assert asyncio.run(notify(f"{refusing.url}/gone", STATUS, delays_s=(0, 0, 0))) is False
    assert refusing.wait(1) == [("/gone", STATUS)] and len(refusing.posts) == 1
    assert "X-Mapex-Signature-256" not in refusing.received[0][0]  # no secret, no signature
    failing = webhook([500, 429])
    assert asyncio.run(notify(failing.url, STATUS, delays_s=(0, 0, 0))) is True
    assert len(failing.wait(3)) == 3


def test_with_a_secret_a_notification_is_signed_as_github_signs_webhooks(webhook):
    """The receiver computes the HMAC-SHA256 of the bytes it got with the shared secret: equal, the service sent them;
    a body changed on the way, or signed with another secret, does not match."""
    hook = webhook([])
    assert asyncio.run(notify(hook.url, STATUS, "s3cret", delays_s=(0,))) is True
    ((headers, raw),) = hook.received
    expected = "sha256=" + hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Mapex-Signature-256"], expected) and json.loads(raw) == STATUS
    assert headers["X-Mapex-Signature-256"] != "sha256=" + hmac.new(b"other", raw, hashlib.sha256).hexdigest()


def test_a_receiver_that_cannot_be_reached_loses_the_notification_without_an_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    assert asyncio.run(notify(f"http://127.0.0.1:{port}/", STATUS, delays_s=(0, 0))) is False


def test_only_http_urls_under_the_deployments_prefixes_are_notified():
    assert checked_notify_url("https://hooks.example.org/mapex/1", ["https://hooks.example.org/"]).endswith("/1")
    with pytest.raises(JobRequestError, match="MAPEX_JOB_NOTIFY_PREFIXES: https://hooks.example.org/"):
        checked_notify_url("http://169.254.169.254/latest", ["https://hooks.example.org/"])
    with pytest.raises(JobRequestError, match="not an http"):
        checked_notify_url("file:///etc/passwd", [])
