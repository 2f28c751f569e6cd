"""The POST that tells a job's notify URL the job ended: tried again while the receiver fails, not when it answers."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mapex_serve.jobs.models import JobRequestError
from mapex_serve.jobs.notify import checked_notify_url, notify

STATUS = {"id": "3f2a", "state": "failed", "results": {}}


def test_a_receiver_that_answers_4xx_is_not_asked_again_and_one_that_fails_is(webhook):
    refusing = webhook([410])
    assert asyncio.run(notify(f"{refusing.url}/gone", STATUS, delays_s=(0, 0, 0))) is False
    assert refusing.wait(1) == [("/gone", STATUS)] and len(refusing.posts) == 1
    failing = webhook([500, 429])
    assert asyncio.run(notify(failing.url, STATUS, delays_s=(0, 0, 0))) is True
    assert len(failing.wait(3)) == 3


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
