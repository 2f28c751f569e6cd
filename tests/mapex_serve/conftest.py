"""A real uvicorn process on loopback serving a model repository, for the end-to-end tests."""

import io
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from mapex_serve.bands import BANDS, bands_of
from mapex_serve.local import LocalService
from mapex_serve.repository import Manifest

DATA = Path(__file__).parents[1] / "data"
S2 = DATA / "sentinel2_6band_10m_epsg32719.tif"


class Server(LocalService):
    """The service on loopback over ``repo`` with ``MAPEX_*`` overrides, one ONNX Runtime thread pool each."""

    def __init__(self, repo: Path, log: Path, **env: str) -> None:
        super().__init__(repo, log, {"OMP_NUM_THREADS": "1", **env}, ready_timeout=120)

    def post(self, task: str, content: Path | bytes, **kw) -> httpx.Response:
        """The GeoTIFF as a multipart field ``file``, the way most clients send it; a GeoTIFF answer is checked."""
        data = content.read_bytes() if isinstance(content, Path) else content
        return self.checked(httpx.post(f"{self.url}/predict/{task}", files={"file": ("scene.tif", data)}, timeout=60,
                                       **kw))

    @staticmethod
    def checked(response: httpx.Response) -> httpx.Response:
        """The response, after checking that a GeoTIFF answer is a valid Cloud-Optimised GeoTIFF (rio-cogeo)."""
        if response.status_code == 200 and response.headers.get("content-type") == "image/tiff":
            Server.cog_band(response.content)
        return response

    @staticmethod
    def cog_band(content: bytes) -> np.ndarray:
        """Band 1 of a GeoTIFF answer, which ``rio_cogeo.cog_validate`` must accept as a COG."""
        from rio_cogeo.cogeo import cog_validate

        with MemoryFile(content) as mem:
            valid, errors, _warnings = cog_validate(mem.name, quiet=True)
            assert valid, f"not a valid COG: {errors}"
            with mem.open() as src:
                return src.read(1)


@pytest.fixture
def start_server(tmp_path) -> Iterator[Callable[..., Server]]:
    """Start servers with their own settings; each is stopped at the end of the test."""
    started: list[Server] = []

    def start(repo: Path, **env: str) -> Server:
        started.append(Server(repo, tmp_path / f"server-{len(started)}.log", **env))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def server_type() -> type[Server]:
    """The Server class, for fixtures of wider scope that start their own (and stop them)."""
    return Server


@pytest.fixture(scope="module")
def server(built_repo, tmp_path_factory) -> Iterator[Server]:
    """One server over every default specialist, shared by a test module."""
    s = Server(built_repo, tmp_path_factory.mktemp("server") / "server.log")
    yield s
    s.stop()


def geotiff_bytes(bands: np.ndarray, descriptions: list[str], nodata: float | None = None) -> bytes:
    """A (C, H, W) array as an in-memory GeoTIFF in UTM with 10 m pixels and band descriptions."""
    count, height, width = bands.shape
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=count, height=height, width=width, dtype=bands.dtype, nodata=nodata,
                      crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as dst:
            dst.write(bands)
            dst.descriptions = descriptions
        return mem.read()


@pytest.fixture(scope="session")
def to_geotiff() -> Callable[..., bytes]:
    """``geotiff_bytes`` for test modules (they cannot import conftest)."""
    return geotiff_bytes


def multipart_body(name: str, data: bytes) -> tuple[bytes, str]:
    """``data`` as the ``file`` part named ``name`` of a multipart/form-data body, and its Content-Type: built by
    hand, so that a test decides how it is sent (in pieces, without a Content-Length)."""
    boundary = "mapex-test-part"
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode() + data
            + f"\r\n--{boundary}--\r\n".encode()), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="session")
def to_multipart() -> Callable[[str, bytes], tuple[bytes, str]]:
    """``multipart_body`` for test modules."""
    return multipart_body


class Malformed(NamedTuple):
    """A request the service must answer with ``status`` (and a message naming ``hint``), never a 5xx."""

    task: str
    content: bytes
    content_type: str
    status: int
    hint: str


@pytest.fixture(scope="session")
def malformed() -> dict[str, Malformed]:
    """The malformed uploads of the issue: each kind with the status and message it must get."""
    s2 = S2.read_bytes()
    two_optical_bands = np.full((2, 40, 40), 1000, np.uint16)
    nan_sar = np.full((2, 40, 40), np.nan, np.float32)
    return {
        "truncated tiff": Malformed("wildfire", s2[: len(s2) // 3], "image/tiff", 400, "GeoTIFF"),
        "random bytes": Malformed("wildfire", np.random.default_rng(0).bytes(5000), "image/tiff", 400, "GeoTIFF"),
        "wrong band count": Malformed("wildfire", geotiff_bytes(two_optical_bands, ["B02", "B03"]), "image/tiff", 422,
                                      "band sets accepted"),
        "NaN-only raster": Malformed("flood", geotiff_bytes(nan_sar, ["VV", "VH"]), "image/tiff", 400, "no valid pixels"),
        "zero-size raster": Malformed("wildfire", b"", "image/tiff", 400, "GeoTIFF"),
        "wrong content type": Malformed("wildfire", s2, "text/plain", 415, "image/tiff"),
        "archive bomb": Malformed("wildfire", _zip_bomb(), "application/zip", 413, "unpacks to more than 200 MiB"),
        "archive of no raster": Malformed("wildfire", _zipped("userdata.json", b"{}"), "application/zip", 400,
                                          "no raster file in it"),
    }


def _zipped(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return out.getvalue()


def _zip_bomb() -> bytes:
    """A ZIP of 250 KB whose one ``.tif`` inflates to 256 MiB of zeros, past the default 200 MiB upload limit."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z, z.open("B04.tif", "w") as member:
        zeros = bytes(2**20)
        for _ in range(256):
            member.write(zeros)
    return out.getvalue()


class RangeServer:
    """A static file server on loopback that honours HTTP range requests, as object storage and CDNs do.

    GDAL's ``/vsicurl/`` reads a COG by ranges; ``ranges`` records each one served, so a test can
    tell that a scene was read window by window rather than downloaded whole.
    """

    def __init__(self, root: Path) -> None:
        import threading
        from functools import partial
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.root, self.ranges = root, []
        served = self.ranges

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the test reads self.ranges instead
                pass

            def send_head(self):
                spec = self.headers.get("Range")
                path = Path(self.translate_path(self.path))
                if not spec or not path.is_file():
                    return super().send_head()
                size = path.stat().st_size
                first, _, last = spec.removeprefix("bytes=").partition("-")
                start = int(first) if first else size - int(last)
                end = min(int(last) if first and last else size - 1, size - 1)
                if start >= size:
                    self.send_error(416)
                    return None
                served.append((path.name, start, end))
                f = path.open("rb")
                f.seek(start)
                self.send_response(206)
                self.send_header("Content-Type", self.guess_type(str(path)))
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self._remaining = end - start + 1
                return f

            def copyfile(self, source, outputfile) -> None:
                remaining = getattr(self, "_remaining", None)
                if remaining is None:
                    return super().copyfile(source, outputfile)
                while remaining > 0:
                    chunk = source.read(min(65536, remaining))
                    if not chunk:
                        break
                    outputfile.write(chunk)
                    remaining -= len(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def range_server(tmp_path_factory) -> Iterator[RangeServer]:
    """Serves a folder of the test's files over HTTP with range requests."""
    s = RangeServer(tmp_path_factory.mktemp("www"))
    yield s
    s.stop()


class S3Server:
    """moto's S3-compatible server (``moto_server``, in its server mode) on loopback, and the GDAL settings for it."""

    def __init__(self, log: Path) -> None:
        import shutil
        import subprocess
        import sys
        import time

        from mapex_serve.local import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self._log = log.open("w")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                    "AWS_S3_ENDPOINT": f"127.0.0.1:{self.port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    s = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def swir_manifest() -> Manifest:
    """A SWIR mask specialist's manifest, as the exporter writes one (the engine is not needed to read a scene)."""
    bands = [{"name": b, "unit": BANDS[b].unit, "scale": BANDS[b].scale, "mean": 0.2, "std": 0.1}
             for b in bands_of(["SWIR"])]
    return Manifest(
        name="wildfire-swir", version=1, task="wildfire", head="mask", classes=["unburned", "burned"],
        modalities=["SWIR"], bands=bands, tile_size=32, input={"name": "input", "shape": [-1, 2, 32, 32]},
        output={"name": "probabilities", "shape": [-1, 2, 32, 32]}, experts_kept=[],
        parameters={"full": 10, "pruned": 5}, opset=18, artefacts={"model.onnx": {"sha256": "0" * 64, "bytes": 1}},
        source_checkpoint_sha256="0" * 64, created=datetime.now(UTC))


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs file systems of a given size (``"3m"``) under ``tmp_path``, unmounted at the end.

    Docker gives containers a 64 MiB /dev/shm unless told otherwise: this is that case, small.
    """
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"shm-{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(point)],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            pytest.skip(f"mounting a small tmpfs needs root with CAP_SYS_ADMIN ({done.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30, check=False)
