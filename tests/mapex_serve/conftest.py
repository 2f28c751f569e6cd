"""A real uvicorn process on loopback serving a model repository, for the end-to-end tests."""

import functools
import http.server
import io
import json
import struct
import subprocess
import sys
import threading
import time
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
    """The service on loopback over ``repo`` with ``MAPEX_*`` overrides, one ONNX Runtime thread pool each, and a jobs
    folder of its own unless told one: servers of other test modules run beside it on the same built repository,
    whose ``.jobs`` they would share (each running the others' jobs, one's start finding the database locked)."""

    def __init__(self, repo: Path, log: Path, **env: str) -> None:
        jobs = str(log.parent / f"{log.stem}-jobs")
        super().__init__(repo, log, {"OMP_NUM_THREADS": "1", "MAPEX_JOBS_DIR": jobs, **env}, ready_timeout=120)

    @functools.cached_property
    def http(self) -> httpx.Client:
        """One client for the server's life: each new httpx client loads the CA bundle again (23 ms of CPU), which
        a thousand fuzzing requests would pay a thousand times."""
        return httpx.Client(base_url=self.url, timeout=60)

    def stop(self, timeout: float = 30) -> int | None:
        if "http" in self.__dict__:
            self.http.close()
        return super().stop(timeout)

    def post(self, task: str, content: Path | bytes, **kw) -> httpx.Response:
        """The GeoTIFF as a multipart field ``file``, the way most clients send it; a GeoTIFF answer is checked."""
        data = content.read_bytes() if isinstance(content, Path) else content
        return self.checked(self.http.post(f"/predict/{task}", files={"file": ("scene.tif", data)}, **kw))

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


def geotiff_bytes(bands: np.ndarray, descriptions: list[str], nodata: float | None = None,
                  tags: dict[str, str] | None = None) -> bytes:
    """A (C, H, W) array as an in-memory GeoTIFF in UTM with 10 m pixels, band descriptions and dataset ``tags``."""
    count, height, width = bands.shape
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=count, height=height, width=width, dtype=bands.dtype, nodata=nodata,
                      crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as dst:
            dst.write(bands)
            dst.descriptions = descriptions
            dst.update_tags(**(tags or {}))
        return mem.read()


@pytest.fixture(scope="session")
def to_geotiff() -> Callable[..., bytes]:
    """``geotiff_bytes`` for test modules (they cannot import conftest)."""
    return geotiff_bytes


def netcdf_bytes(folder: Path, variables: dict[str, np.ndarray], name: str = "product.nc",
                 times: list[float] | None = None) -> bytes:
    """A CF-1.8 NetCDF-4 product as xarray/netCDF4 write one: one 2-D variable per band, x/y coordinates, a
    grid_mapping variable with crs_wkt, scale_factor and units (CF conventions, grid mappings); with ``times``, a
    ``t`` dimension first, as openEO's ``save_result(format="netCDF")`` writes (each variable then (t, y, x))."""
    netCDF4 = pytest.importorskip("netCDF4")
    import rasterio.crs

    path = folder / name
    ny, nx = next(iter(variables.values())).shape[-2:]
    with netCDF4.Dataset(path, "w") as ds:
        ds.Conventions = "CF-1.8"
        dims: tuple[str, ...] = ("y", "x")
        if times is not None:
            ds.createDimension("t", len(times))
            t = ds.createVariable("t", "f8", ("t",))
            t.standard_name, t.units, t[:] = "time", "days since 1990-01-01", times
            dims = ("t", *dims)
        ds.createDimension("y", ny)
        ds.createDimension("x", nx)
        x = ds.createVariable("x", "f8", ("x",))
        x[:] = 500005 + 10 * np.arange(nx)
        x.standard_name = "projection_x_coordinate"
        y = ds.createVariable("y", "f8", ("y",))
        y[:] = 4999995 - 10 * np.arange(ny)
        y.standard_name = "projection_y_coordinate"
        crs = ds.createVariable("crs", "i4")
        crs.crs_wkt = crs.spatial_ref = rasterio.crs.CRS.from_string("EPSG:32633").to_wkt()
        for key, values in variables.items():
            v = ds.createVariable(key, "u2", dims, fill_value=0)
            v.grid_mapping, v.scale_factor, v.units = "crs", 1e-4, "1"
            v.set_auto_scale(False)
            v[:] = values
    return path.read_bytes()


@pytest.fixture(scope="session")
def to_netcdf() -> Callable[..., bytes]:
    """``netcdf_bytes`` for test modules."""
    return netcdf_bytes


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
        "radar geometry": Malformed("flood", _radar_geometry(), "image/tiff", 422, "not on a map grid"),
    }


def _radar_geometry() -> bytes:
    """Sigma0 as SNAP calibrates it before terrain correction: placed on Earth by ground control points only."""
    from rasterio.control import GroundControlPoint

    corners = [(0, 0, 10.0, 50.0), (0, 40, 10.5, 50.05), (40, 0, 9.95, 49.7), (40, 40, 10.45, 49.75)]
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=2, height=40, width=40, dtype="float32", crs="EPSG:4326",
                      gcps=[GroundControlPoint(r, c, x, y) for r, c, x, y in corners]) as dst:
            dst.write(np.full((2, 40, 40), 0.05, np.float32))
            dst.descriptions = ("Sigma0_VV", "Sigma0_VH")
        return mem.read()


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

    GDAL's ``/vsicurl/`` reads a COG by ranges; ``ranges`` records each one served, and each whole file (the file's
    path under the root, its first and last byte), so a test can tell that a scene was read window by window rather
    than downloaded whole, or which chunks of a Zarr store were fetched. ``seconds_per_mib`` slows whole-file
    downloads, as a far server does. Paths under ``/private/`` answer 401, as a login-protected archive (NASA
    Earthdata's) does to a client without one.
    """

    def __init__(self, root: Path) -> None:
        import threading
        import time
        from functools import partial
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.root, self.ranges = root, []
        self.seconds_per_mib = 0.0
        served, server = self.ranges, self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the test reads self.ranges instead
                pass

            def send_head(self):
                if self.path.startswith("/private/"):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="Please enter your Earthdata Login credentials"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                spec = self.headers.get("Range")
                path = Path(self.translate_path(self.path))
                if not spec and self.command == "GET" and path.is_file():  # a whole file (a Zarr chunk)
                    served.append((path.relative_to(server.root).as_posix(), 0, path.stat().st_size - 1))
                if not spec or not path.is_file():
                    return super().send_head()
                size = path.stat().st_size
                first, _, last = spec.removeprefix("bytes=").partition("-")
                start = int(first) if first else size - int(last)
                end = min(int(last) if first and last else size - 1, size - 1)
                if start >= size:
                    self.send_error(416)
                    return None
                served.append((path.relative_to(server.root).as_posix(), start, end))
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
                    while chunk := source.read(2**20):
                        outputfile.write(chunk)
                        time.sleep(server.seconds_per_mib)
                    return None
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

        from mapex_serve.local import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self._log = log.open("w")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        wait_serving(self.endpoint, self.proc, lambda: f"moto_server did not start: {log.read_text()[-2000:]}")
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


def wait_serving(url: str, proc: subprocess.Popen, failed: Callable[[], str], seconds: float = 30) -> None:
    """Return once a server started as ``proc`` answers at ``url``; ``RuntimeError(failed())`` if it exits or
    ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(failed()) from None
            time.sleep(0.1)


class StaticServer:
    """Python's own file server in a process of its own, as an object store serves a Zarr store (a file a chunk).

    Not ``RangeServer``, whose thread runs in the test's process: rasterio keeps the GIL while GDAL opens a Zarr
    array, and GDAL's Zarr driver then asks for the store's ``pam.aux.xml``, which that thread could not answer.
    """

    def __init__(self, root: Path) -> None:
        from mapex_serve.local import free_port

        self.root, port = root, free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                      "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_serving(self.url, self.proc, lambda: "python -m http.server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def static_server(tmp_path_factory) -> Iterator[StaticServer]:
    """Serves a folder from another process (``StaticServer``): what a test writes into ``root`` is served."""
    s = StaticServer(tmp_path_factory.mktemp("static"))
    yield s
    s.stop()


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


@pytest.fixture(scope="session")
def sar_manifest(swir_manifest) -> Manifest:
    """A SAR flood specialist's manifest (VV, VH in dB), as ``swir_manifest``; it records no backscatter."""
    bands = [{"name": b, "unit": BANDS[b].unit, "scale": 1.0, "mean": -15.0, "std": 5.0} for b in ("VV", "VH")]
    return Manifest.model_validate({**swir_manifest.model_dump(), "name": "flood-sar", "task": "flood",
                                    "modalities": ["SAR"], "bands": bands})


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


def dimap_header(names: list[str], bands: np.ndarray, *, units: list[str | None], nodata: list[float | None],
                 scales: list[tuple[float, float]], virtual: dict[str, str], sensed: tuple[str, str] | None = None
                 ) -> str:
    """A DIMAP header as SNAP's ``DimapHeaderWriter`` writes it into a GeoTIFF: ``Production`` with the scene's start
    and stop (``sensed``, as SNAP writes times: ``30-AUG-2024 17:00:00.123456``), ``Image_Interpretation`` with a
    ``Spectral_Band_Info`` a band (virtual bands among them, whose pixels are not written), then the metadata."""
    infos = []
    for i, name in enumerate([*names, *virtual]):
        stored = i < len(names)
        unit, nd, (scale, offset) = (units[i], nodata[i], scales[i]) if stored else ("intensity_db", None, (1.0, 0.0))
        infos.append(f"""        <Spectral_Band_Info>
            <BAND_INDEX>{i}</BAND_INDEX>
            <BAND_DESCRIPTION />
            <BAND_NAME>{name}</BAND_NAME>
            <BAND_RASTER_WIDTH>{bands.shape[2]}</BAND_RASTER_WIDTH>
            <BAND_RASTER_HEIGHT>{bands.shape[1]}</BAND_RASTER_HEIGHT>
            <DATA_TYPE>{bands.dtype.name if stored else "float32"}</DATA_TYPE>
            {f"<PHYSICAL_UNIT>{unit}</PHYSICAL_UNIT>" if unit else "<PHYSICAL_UNIT />"}
            <SOLAR_FLUX>0.0</SOLAR_FLUX>
            <BAND_WAVELEN>0.0</BAND_WAVELEN>
            <BANDWIDTH>0.0</BANDWIDTH>
            <SCALING_FACTOR>{scale!r}</SCALING_FACTOR>
            <SCALING_OFFSET>{offset!r}</SCALING_OFFSET>
            <LOG10_SCALED>false</LOG10_SCALED>
            <NO_DATA_VALUE_USED>{str(nd is not None).lower()}</NO_DATA_VALUE_USED>
            <NO_DATA_VALUE>{0.0 if nd is None else nd!r}</NO_DATA_VALUE>
            {f"<VIRTUAL_BAND>true</VIRTUAL_BAND><EXPRESSION>{virtual[name]}</EXPRESSION>" if not stored else ""}
        </Spectral_Band_Info>""")
    times = "" if sensed is None else (
        f"\n        <PRODUCT_SCENE_RASTER_START_TIME>{sensed[0]}</PRODUCT_SCENE_RASTER_START_TIME>"
        f"\n        <PRODUCT_SCENE_RASTER_STOP_TIME>{sensed[1]}</PRODUCT_SCENE_RASTER_STOP_TIME>")
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<Dimap_Document name="S1A_IW_GRDH_1SDV_20240830T170000_Cal_TC.dim">
    <Metadata_Id>
        <METADATA_FORMAT version="2.12.1">DIMAP</METADATA_FORMAT>
        <METADATA_PROFILE>BEAM_PRODUCT</METADATA_PROFILE>
    </Metadata_Id>
    <Production>
        <DATASET_PRODUCER_NAME />
        <PRODUCT_TYPE>GRD</PRODUCT_TYPE>{times}
    </Production>
    <Raster_Dimensions>
        <NCOLS>{bands.shape[2]}</NCOLS>
        <NROWS>{bands.shape[1]}</NROWS>
        <NBANDS>{len(infos)}</NBANDS>
    </Raster_Dimensions>
    <Image_Interpretation>
{chr(10).join(infos)}
    </Image_Interpretation>
    <Dataset_Sources>
        <MDElem name="metadata">
            <MDElem name="Abstracted_Metadata">
                <MDATTR name="MISSION" type="ascii">SENTINEL-1A</MDATTR>
                <MDATTR name="PASS" type="ascii">ASCENDING</MDATTR>
            </MDElem>
        </MDElem>
    </Dataset_Sources>
</Dimap_Document>
"""


def snap_geotiff_bytes(bands: np.ndarray, names: list[str], *, units: list[str | None] | None = None,
                       nodata: list[float | None] | None = None, scales: list[tuple[float, float]] | None = None,
                       virtual: dict[str, str] | None = None, epsg: int = 32633,
                       origin: tuple[float, float] = (500000.0, 5000000.0), pixel: float = 10.0,
                       sensed: tuple[str, str] | None = None) -> bytes:
    """``bands`` (k, h, w) as SNAP's ``GeoTiffProductWriter`` writes a product (its ``TiffIFD``): big-endian classic
    TIFF, the IFD at byte 8 with its values after it, uncompressed, one strip a band (planar), GeoTIFF keys of a
    projected CRS by code, and the product's DIMAP header in private tag 65000, where alone its bands are named."""
    k, h, w = bands.shape
    header = dimap_header(names, bands, units=units or [None] * k, nodata=nodata or [None] * k,
                          scales=scales or [(1.0, 0.0)] * k, virtual=virtual or {}, sensed=sensed)
    fmt = {"u": 1, "i": 2, "f": 3}[bands.dtype.kind]
    strip = h * w * bands.dtype.itemsize
    short, long_, rational, double, ascii_ = 3, 4, 5, 12, 2
    keys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg]
    entries = {256: (long_, [w]), 257: (long_, [h]), 258: (short, [bands.dtype.itemsize * 8] * k), 259: (short, [1]),
               262: (short, [1]), 270: (ascii_, "S1A_IW_GRDH_1SDV_20240830T170000_Cal_TC"), 273: (long_, [0] * k),
               277: (short, [k]), 278: (long_, [h]), 279: (long_, [strip] * k), 282: (rational, [1, 1]),
               283: (rational, [1, 1]), 284: (short, [2]), 296: (short, [1]), 339: (short, [fmt] * k),
               33550: (double, [pixel, pixel, 0.0]), 33922: (double, [0.0, 0.0, 0.0, *origin, 0.0]),
               34735: (short, keys), 65000: (ascii_, header)}

    def payload(kind: int, values) -> tuple[int, bytes]:
        if kind == ascii_:
            text = values.encode("latin-1") + b"\0"
            return len(text), text
        code = {short: "H", long_: "I", rational: "I", double: "d"}[kind]
        return (len(values) // 2 if kind == rational else len(values)), struct.pack(f">{len(values)}{code}", *values)

    ifd_size = 2 + 12 * len(entries) + 4
    values_at = 8 + ifd_size
    referenced = sum((len(payload(*v)[1]) + 1) & ~1 for v in entries.values() if len(payload(*v)[1]) > 4)
    entries[273] = (long_, [values_at + referenced + i * strip for i in range(k)])
    ifd, values = struct.pack(">H", len(entries)), b""
    for tag in sorted(entries):
        count, data = payload(*entries[tag])
        if len(data) <= 4:
            ifd += struct.pack(">HHI", tag, entries[tag][0], count) + data.ljust(4, b"\0")
        else:
            ifd += struct.pack(">HHII", tag, entries[tag][0], count, values_at + len(values))
            values += data + b"\0" * (len(data) & 1)
    pixels = b"".join(b.astype(b.dtype.newbyteorder(">")).tobytes() for b in bands)
    return b"MM\0*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + values + pixels


@pytest.fixture(scope="session")
def dimap_document() -> Callable[..., str]:
    """A BEAM-DIMAP product's ``.dim``: ``dimap_document(names, bands, units=, nodata=, scales=, virtual=)``."""
    return dimap_header


@pytest.fixture(scope="session")
def snap_geotiff() -> Callable[..., bytes]:
    """Write bands as SNAP exports a product to GeoTIFF: ``snap_geotiff(bands, names, units=, nodata=, scales=,
    sensed=)``."""
    return snap_geotiff_bytes


class EopfProduct(NamedTuple):
    """An EOPF Sentinel-2 product written by ``write_eopf_product``: its store, and each band's stored values (uint16
    counts) and pixel size at the finest resolution the product holds it."""

    path: Path
    counts: dict[str, np.ndarray]
    pixel_m: dict[str, int]


#: The bands of an EOPF Sentinel-2 L2A product by resolution group: each again in every coarser group.
EOPF_GROUPS = {10: ("b02", "b03", "b04", "b08"),
               20: ("b02", "b03", "b04", "b05", "b06", "b07", "b8a", "b11", "b12"),
               60: ("b01", "b02", "b03", "b04", "b05", "b06", "b07", "b8a", "b09", "b11", "b12")}


def write_eopf_product(folder: Path, name: str, size: int = 96, epsg: int = 32633, chunk: int | None = None
                       ) -> EopfProduct:
    """A Sentinel-2 product as ESA's EOPF writes one to Zarr (v2, consolidated ``.zmetadata``), ``size`` 10 m pixels
    a side: ``measurements/reflectance/r{10,20,60}m`` with ``x``/``y`` coordinate arrays of pixel centres, every band
    again in each coarser group, CF ``scale_factor`` 0.0001, ``add_offset`` -0.1, fill 0, ``_eopf_attrs``, the CRS
    only as ``proj:epsg`` (which GDAL does not read), and the L2A scene classification. ``chunk``: the chunks' side
    on the ground in 10 m pixels, the same ground in every group (EOPF's: 1830 at 10 m, 915 at 20 m); None: one chunk
    an array. Chunks are zlib (EOPF's are Blosc, which the test has no writer for; GDAL reads both)."""
    import json
    import zlib

    store, consolidated = folder / name, {}
    level = "L1C" if "MSIL1C" in name else "L2A"

    def put(rel: str, document: dict) -> None:
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_text(json.dumps(document))
        consolidated[rel] = document

    def group(rel: str, attrs: dict | None = None) -> None:
        put(f"{rel}/.zgroup".lstrip("/"), {"zarr_format": 2})
        if attrs:
            put(f"{rel}/.zattrs".lstrip("/"), attrs)

    def array(rel: str, values: np.ndarray, dims: list[str], attrs: dict, fill: int | None = None,
              side: int | None = None) -> None:
        side = side or max(values.shape)
        put(f"{rel}/.zarray", {"zarr_format": 2, "shape": list(values.shape), "chunks": [side] * values.ndim,
                               "dtype": values.dtype.str, "compressor": {"id": "zlib", "level": 1},
                               "fill_value": fill, "order": "C", "filters": None})
        put(f"{rel}/.zattrs", {**attrs, "_ARRAY_DIMENSIONS": dims})
        for at in np.ndindex(*(-(-n // side) for n in values.shape)):  # edge chunks stored whole, padded
            block = np.full((side,) * values.ndim, fill or 0, values.dtype)
            part = values[tuple(slice(i * side, (i + 1) * side) for i in at)]
            block[tuple(slice(0, n) for n in part.shape)] = part
            (store / rel / ".".join(map(str, at))).write_bytes(zlib.compress(block.tobytes()))

    group("", {"stac_discovery": {"type": "Feature", "id": name.removesuffix(".zarr"), "properties": {
        "proj:epsg": epsg, "product:type": f"S2MSI{level[1:]}", "processing:level": level}}})
    for g in ("measurements", "measurements/reflectance", "conditions", "conditions/mask"):
        group(g)
    rng = np.random.default_rng(len(name))
    counts, pixel_m = {}, {}
    bbox = [399960, 4600020 - 10 * size, 399960 + 10 * size, 4600020]
    cf = {"scale_factor": 0.0001, "add_offset": -0.1, "units": "digital_counts"}
    for res, names in EOPF_GROUPS.items():
        rel, n = f"measurements/reflectance/r{res}m", size * 10 // res
        group(rel)
        array(f"{rel}/x", (399960 + res // 2 + res * np.arange(n)).astype("<i8"), ["x"], {"units": "m"})
        array(f"{rel}/y", (4600020 - res // 2 - res * np.arange(n)).astype("<i8"), ["y"], {"units": "m"})
        for band in names:
            values = rng.integers(1100, 4500, (n, n)).astype("<u2")
            values[:2, :2] = 0  # no data at a corner, as at a swath's edge
            array(f"{rel}/{band}", values, ["y", "x"], {
                **cf, "_eopf_attrs": {**cf, "dtype": "<u2", "fill_value": 0}, "proj:epsg": epsg, "proj:bbox": bbox,
                "long_name": f"{'BOA' if level == 'L2A' else 'TOA'} reflectance from MSI acquisition at spectral "
                             f"band {band}"}, fill=0, side=chunk and max(1, chunk * 10 // res))
            counts.setdefault(band, values)
            pixel_m.setdefault(band, res)
    if level == "L2A":
        rel, n = "conditions/mask/l2a_classification/r20m", size // 2
        group("conditions/mask/l2a_classification")
        group(rel)
        array(f"{rel}/x", (399970 + 20 * np.arange(n)).astype("<i8"), ["x"], {"units": "m"})
        array(f"{rel}/y", (4600010 - 20 * np.arange(n)).astype("<i8"), ["y"], {"units": "m"})
        array(f"{rel}/scl", np.full((n, n), 4, "u1"), ["y", "x"], {"long_name": "Scene classification",
                                                                    "proj:epsg": epsg}, fill=0)
    (store / ".zmetadata").write_text(json.dumps({"zarr_consolidated_format": 1, "metadata": consolidated}))
    return EopfProduct(store, counts, pixel_m)


@pytest.fixture(scope="session")
def eopf_product() -> Callable[..., EopfProduct]:
    """Write an EOPF Zarr Sentinel-2 product: ``eopf_product(folder, "S2B_MSIL2A_<...>.zarr", size=96)``."""
    return write_eopf_product


class Receiver:
    """A webhook receiver on loopback: records each POST's path and JSON body (and headers and bytes), answers them
    ``answers`` in turn, then 200."""

    def __init__(self, answers: list[int]) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.received: list[tuple[dict[str, str], bytes]] = []  # each POST's headers and bytes
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), raw))
                receiver.posts.append((self.path, json.loads(raw)))
                self.send_response(answers.pop(0) if answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 30) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.posts) >= n, f"{len(self.posts)} of {n} notifications in {timeout} s: {self.posts}"
        return self.posts

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook() -> Iterator[Callable[[list[int]], Receiver]]:
    """Receivers of webhooks (``webhook([503])``: answers 503 first), stopped after the test."""
    made: list[Receiver] = []

    def receiver(answers: list[int]) -> Receiver:
        made.append(Receiver(list(answers)))
        return made[-1]

    yield receiver
    for r in made:
        r.stop()
