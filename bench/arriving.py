"""A scene sent over a link of a stated speed: how soon its answer comes when it is read as it arrives.

    python -m bench.arriving [--size 2048] [--mbps 100] [--rounds 2] [--predict-parts N]

The same scene (``bench.scene``'s mosaic) is posted by a client held to ``--mbps``, three times a
round: raw as ``bench.scene`` writes it, its directory after its blocks (GDAL's GeoTIFF writer,
window by window), so that nothing can be read before the last byte; raw as a Cloud-Optimised
GeoTIFF of the same pixels (directories first, overviews, then the rows in order), which its decode
worker reads while it arrives (``mapex_serve.decode.arriving``); and that COG as the file field of a
multipart body, as ``curl -F`` sends it, with its Content-Length and without (sent chunked, as a client streaming
from another store does: read as it arrives since stop 40). Each round also posts the scene at once
(loopback speed, the same way): the service's own time. If nothing overlapped, an answer would take the upload's
time plus the service's; read as it arrives, the most of the two. ``overlap`` says how much of the
shorter one was hidden: (upload + service - answer) / min(upload, service), 1 when all of it.
``--predict-parts N`` gives the service N decode workers and splits every large enough scene into N parts, as a
GPU node does by default: each part of a COG is read as its rows arrive.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from rasterio.shutil import copy

from bench.harness import (
    Report,
    ServiceProcess,
    ensure_repo,
    find_entry,
    post_scene,
    resolve_engine_threads,
    service_arguments,
)
from bench.scene import make_scene

_PIECE = 256 * 1024
#: The "link" of a post at once: loopback's own speed.
_AT_ONCE = 1e9


def paced(body: bytes, mbps: float, sent: list[float]) -> Iterator[bytes]:
    """``body`` in pieces no faster than ``mbps`` megabits a second; ``sent`` gets the seconds the last piece left at."""
    start, rate = time.perf_counter(), mbps * 1e6 / 8
    for at in range(0, len(body), _PIECE):
        if (wait := start + at / rate - time.perf_counter()) > 0:
            time.sleep(wait)
        yield body[at: at + _PIECE]
    sent.append(time.perf_counter() - start)


def as_multipart(data: bytes, name: str = "scene.tif") -> tuple[bytes, str]:
    """``data`` as the one file field of a multipart body (what ``curl -F file=@scene.tif`` sends), and its type."""
    boundary = "mapex-bench-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/tiff\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_paced(url: str, task: str, modality: str, body: bytes, mbps: float,
               content_type: str = "image/tiff", chunked: bool = False) -> tuple[float, float]:
    """The seconds to the answer (a 200, else the run ends) and those the upload took, over a ``mbps`` link;
    ``chunked``: without a Content-Length."""
    sent: list[float] = []
    start = time.perf_counter()
    length = {} if chunked else {"Content-Length": str(len(body))}
    r = httpx.post(f"{url}/predict/{task}?modality={modality}", content=paced(body, mbps, sent), timeout=3600,
                   headers={"Content-Type": content_type, **length})
    answered = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"the service answered {r.status_code}: {r.text[:500]}")
    return answered, sent[0]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.arriving", description=__doc__.split("\n\n")[0])
    service_arguments(p, "landcover-seg", "task posted to (default landcover-seg: a mask)")
    p.add_argument("--size", type=int, default=2048, help="scene width and height in pixels")
    p.add_argument("--mbps", type=float, default=100.0, help="the link's speed in megabits a second")
    p.add_argument("--rounds", type=int, default=2, help="rounds; the two files take turns to go first")
    p.add_argument("--predict-parts", type=int, default=None, metavar="N",
                   help="N decode workers, and scenes split in N parts (MAPEX_PREDICT_PARTS; default: as shipped)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.mbps <= 0 or (args.predict_parts is not None and args.predict_parts < 1):
        p.error("--rounds and --predict-parts must be at least 1, --mbps positive")
    resolve_engine_threads(args)
    repo = ensure_repo(args.repo, args.checkpoint)
    _entry, manifest = find_entry(repo, args.task, [args.modality])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-arriving-") as tmp:
        last = make_scene(args.size, manifest.tile_size, Path(tmp) / "scene.tif")
        cog = Path(tmp) / "scene-cog.tif"
        copy(last, cog, driver="COG", compress="deflate", blocksize=256)
        cog_bytes = cog.read_bytes()
        bodies = {"directory last": (last.read_bytes(), "image/tiff"), "COG": (cog_bytes, "image/tiff"),
                  "COG, multipart": as_multipart(cog_bytes), "COG, multipart, chunked": as_multipart(cog_bytes)}
        env = {"MAPEX_MAX_BATCH": str(args.max_batch), "MAPEX_INTRA_OP_THREADS": str(args.threads),
               "MAPEX_ENGINE_RUNNERS": str(args.runners), "MAPEX_REQUEST_TIMEOUT_S": "3600",
               "MAPEX_MAX_UPLOAD_MB": str(max(len(b) for b, _type in bodies.values()) // 2**20 + 16)}
        if args.predict_parts is not None:
            env |= {"MAPEX_PREDICT_PARTS": str(args.predict_parts), "MAPEX_DECODE_WORKERS": str(args.predict_parts)}
        with ServiceProcess(repo, env) as server:
            post_scene(server.url, args.task, args.modality, cog_bytes)  # warm-up
            for round_ in range(1, args.rounds + 1):
                for kind in sorted(bodies, reverse=round_ % 2 == 0):
                    body, content_type = bodies[kind]
                    print(f"round {round_}: {kind}, {len(body) / 2**20:.0f} MiB at {args.mbps:g} Mbit/s ...",
                          file=sys.stderr)
                    chunked = kind.endswith("chunked")
                    at_once, _sent = post_paced(server.url, args.task, args.modality, body, _AT_ONCE, content_type,
                                                chunked)
                    answered, upload = post_paced(server.url, args.task, args.modality, body, args.mbps, content_type,
                                                  chunked)
                    rows.append({"round": round_, "file": kind, "size": args.size, "upload_mib": len(body) / 2**20,
                                 "mbps": args.mbps, "upload_s": upload, "service_s": at_once, "answer_s": answered,
                                 "overlap": (upload + at_once - answered) / min(upload, at_once),
                                 "answer_over_sum": answered / (upload + at_once),
                                 "answer_over_max": answered / max(upload, at_once)})
    notes = ["upload_s: the paced client's time to send the body; service_s: the same file posted at once (loopback) "
             "just before; answer_s: the paced post's time to its answer; overlap: (upload_s + service_s - answer_s) / "
             "min(upload_s, service_s), 1 when the shorter of the two is wholly hidden, 0 when nothing overlaps",
             "a COG has its overviews' blocks before its full-resolution rows (GDAL's COG layout), so its first rows "
             "are read once the overviews and those rows are in"]
    for kind in ("COG", "COG, multipart", "COG, multipart, chunked", "directory last"):
        mine = [r for r in rows if r["file"] == kind]
        overlaps = ", ".join(f"{r['overlap']:.2f}" for r in mine)
        over_sum = ", ".join(f"{r['answer_over_sum']:.2f}" for r in mine)
        notes.append(f"{kind}: overlap {overlaps}; answer / (upload + service) {over_sum}")
    columns = ["round", "file", "size", "upload_mib", "mbps", "upload_s", "service_s", "answer_s", "overlap",
               "answer_over_sum", "answer_over_max"]
    report = Report("arriving", f"A {args.size} x {args.size} scene over a {args.mbps:g} Mbit/s link, read as it "
                    f"arrives (COG) or after (directory last)",
                    {"repo": str(repo), "task": args.task, "threads": args.threads, "runners": args.runners,
                     "max_batch": args.max_batch, "rounds": args.rounds,
                     "predict_parts": args.predict_parts or "as shipped"}, rows, columns, [], notes)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
