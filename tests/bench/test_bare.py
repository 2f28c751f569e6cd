"""bench.bare: the least a tile server does, served by uvicorn, and the bound its CPU puts on bench.serve's goal."""

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio

from bench.bare import BareServer
from mapex_serve.cores import usable_cores

S2 = Path(__file__).parents[1] / "data" / "sentinel2_6band_10m_epsg32719.tif"


def test_the_bare_server_reads_a_real_geotiff_as_gdal_does():
    with rasterio.open(S2) as d:
        pixels, crs, transform = d.read().astype(np.float32), d.crs.to_string(), list(d.transform)[:6]
    with BareServer() as server:
        before = server.cpu_seconds()
        request = urllib.request.Request(server.url, data=S2.read_bytes(), headers={"Content-Type": "image/tiff"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert server.cpu_seconds() > before  # its own process did the reading
    assert answer == {"shape": list(pixels.shape), "mean": pytest.approx(float(pixels.mean()), rel=1e-6),
                      "crs": crs, "transform": pytest.approx(transform)}
    assert server.proc.poll() is not None  # stopped on leaving


def test_the_ceiling_is_the_rate_every_core_busy_allows_over_the_engines():
    # 1,000 requests at 1 ms each of server and client CPU, plus 0.5 ms of engine a tile, on every core at once
    cores = usable_cores()
    assert BareServer.ceiling(1000, 1.0, 0.5, 2000.0) == pytest.approx(1000 / (1.5 / cores) / 2000)
