"""The Open Inference Protocol as its clients use it: ``tritonclient.http`` and KServe's ``InferenceRESTClient``,
unmodified, against a real uvicorn server of the service, JSON and binary tensors.

``tritonclient[http]`` is in the dev extra. KServe is not: ``pip install kserve`` into the project's
venv downgrades protobuf (7 -> 6, which onnx shares) and adds uvloop and httptools, which uvicorn
then picks up, so the service under test would no longer be the one deployed. Its client runs
instead in its own venv (``.venv-kserve``, created on first use), in a subprocess.
"""

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]' (the dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "flood-sar"  # input [-1, 2, 32, 32] sigma0 dB, output [-1, K, 32, 32] probabilities
ROOT = Path(__file__).parents[2]
KSERVE_VENV = ROOT / ".venv-kserve"


@pytest.fixture(scope="module")
def client(server):
    c = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def _tiles(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-12, 4, (n, 2, 32, 32)).astype(np.float32)


def _infer(client, x: np.ndarray, datatype: str = "FP32", *, binary_in: bool = True, outputs=None, **kw) -> np.ndarray:
    inp = tritonhttp.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary_in)
    result = client.infer(MODEL, [inp], outputs=outputs, **kw)
    return result.as_numpy(client.get_model_metadata(MODEL)["outputs"][0]["name"])


def test_tritonclient_metadata_and_health(client, server):
    meta = client.get_server_metadata()
    assert meta["name"] == "mapex-serve" and "binary_tensor_data" in meta["extensions"]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, model_version="1")
    assert not client.is_model_ready("nothing") and not client.is_model_ready(MODEL, model_version="9")
    model = client.get_model_metadata(MODEL)
    assert model["name"] == MODEL and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 2, 32, 32]}]
    assert model["outputs"][0]["datatype"] == "FP32" and model["outputs"][0]["shape"][0] == -1
    assert client.get_model_metadata(MODEL, model_version="1") == model
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nothing")
    assert e.value.status() == "404" and MODEL in e.value.message()


def test_tritonclient_binary_and_json_tensors_agree(client, server):
    x = _tiles()
    binary = _infer(client, x)  # binary in, binary out (no outputs named: binary_data_output)
    out_name = client.get_model_metadata(MODEL)["outputs"][0]["name"]
    as_json = _infer(client, x, binary_in=False, outputs=[tritonhttp.InferRequestedOutput(out_name, binary_data=False)])
    assert binary.dtype == np.float32 and binary.shape[0] == 3 and binary.shape[2:] == (32, 32)
    np.testing.assert_allclose(binary.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(binary, as_json, atol=1e-6)
    # the same tiles through the plain JSON route the existing tests use
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}, timeout=60)
    assert r.headers["content-type"] == "application/json"
    np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(binary.shape), binary, atol=1e-6)
    # versioned route, gzip request body, a request id echoed
    inp = tritonhttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(MODEL, [inp], model_version="1", request_id="tile-7", request_compression_algorithm="gzip")
    assert res.get_response()["id"] == "tile-7" and res.get_response()["model_version"] == "1"
    np.testing.assert_allclose(res.as_numpy(out_name), binary, atol=1e-6)


def test_tritonclient_datatypes(client):
    x = _tiles(2, seed=1)
    fp32 = _infer(client, x)
    np.testing.assert_allclose(_infer(client, x.astype(np.float64), "FP64"), fp32, atol=1e-6)
    np.testing.assert_allclose(_infer(client, x.astype(np.float16), "FP16"), fp32, atol=2e-2)  # fp16 rounding of dB
    np.testing.assert_allclose(_infer(client, x.astype(np.float64), "FP64", binary_in=False), fp32, atol=1e-6)
    for dtype, datatype in ((np.int32, "INT32"), (np.uint8, "UINT8"), (np.bool_, "BOOL")):
        with pytest.raises(InferenceServerException) as e:
            _infer(client, x.astype(dtype), datatype)
        assert e.value.status() == "400" and "FP32" in e.value.message() and datatype in e.value.message()


def test_tritonclient_refusals_say_what_is_accepted(client, server):
    out_name = client.get_model_metadata(MODEL)["outputs"][0]["name"]
    cases = [
        (lambda: _infer(client, np.zeros((1, 3, 32, 32), np.float32)), "[N, 2, 32, 32]"),
        (lambda: _infer(client, _tiles(1), outputs=[tritonhttp.InferRequestedOutput("logits")]), "one output"),
        (lambda: _infer(client, _tiles(1), outputs=[tritonhttp.InferRequestedOutput(out_name, class_count=3)]),
         "classification"),
        (lambda: _infer(client, np.full((1, 2, 32, 32), np.nan, np.float32)), "NaN"),
    ]
    for call, hint in cases:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "400" and hint in e.value.message(), e.value.message()
    # hand-made bodies: a header length past the body, binary bytes that do not add up, a wrong input name
    x = _tiles(1)

    def header(name: str = "input") -> bytes:
        return json.dumps({"inputs": [{"name": name, "shape": [1, 2, 32, 32], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}]}).encode()

    url = f"{server.url}/v2/models/{MODEL}/infer"
    n = len(header())
    for body, length, hint in ((header() + x.tobytes(), n + x.nbytes + 1, "Inference-Header-Content-Length"),
                               (header() + x.tobytes()[:-4], n, "only"),
                               (header() + x.tobytes() + b"1234", n, "add up"),
                               (header("x") + x.tobytes(), len(header("x")), "named 'input'")):
        r = httpx.post(url, content=body, headers={"Inference-Header-Content-Length": str(length)}, timeout=30)
        assert r.status_code == 400 and hint in r.json()["detail"] and r.json()["error"].startswith("InferRequestError")
    r = httpx.post(url, content=gzip.compress(b"\0" * (2**20)), headers={"Content-Encoding": "br"}, timeout=30)
    assert r.status_code == 400 and "gzip, deflate" in r.json()["detail"]
    r = httpx.post(url, content=b"{not json", timeout=30)
    assert r.status_code == 400 and '"inputs"' in r.json()["detail"]


def _kserve_python() -> Path:
    """The interpreter of ``.venv-kserve`` (created with ``pip install kserve`` on first use); skips when offline."""
    python = KSERVE_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import kserve"], capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", KSERVE_VENV], check=True)
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "kserve"], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        pytest.skip(f"kserve could not be installed into {KSERVE_VENV} (no package index reachable?): "
                    f"{done.stderr[-500:]}")
    return python


_KSERVE_CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    import numpy as np
    import httpx
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    url, model, out_name = sys.argv[1:4]
    x = np.load(sys.argv[4])

    async def main():
        report = {}
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
            report["server_ready"] = await client.is_server_ready(url)
            report["server_live"] = await client.is_server_live(url)
            report["model_ready"] = await client.is_model_ready(url, model)
            report["other_ready"] = await client.is_model_ready(url, "nothing")
            for binary in (True, False):
                inp = InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                wanted = [RequestedOutput(out_name, parameters={"binary_data": binary})]
                res = await client.infer(url, InferRequest(model, [inp], request_id="k-1", request_outputs=wanted),
                                         model_name=model)
                out = res.outputs[0].as_numpy()
                np.save(sys.argv[5] + ("-binary" if binary else "-json") + ".npy", out)
                report["binary" if binary else "json"] = {"id": res.id, "shape": list(out.shape),
                                                          "dtype": str(out.dtype)}
            inp = InferInput("input", list(x.shape), "INT64")
            inp.set_data_from_numpy(x.astype(np.int64), binary_data=True)
            try:
                await client.infer(url, InferRequest(model, [inp]), model_name=model)
            except httpx.HTTPStatusError as e:
                report["int64"] = {"status": e.response.status_code, "message": str(e)}
        print(json.dumps(report))

    asyncio.run(main())
""")


@pytest.mark.slow
def test_kserve_inference_rest_client(server, client, tmp_path):
    python = _kserve_python()
    version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('kserve'))"], capture_output=True,
                             text=True).stdout.strip()
    x = _tiles(4, seed=2)
    np.save(tmp_path / "x.npy", x)
    out_name = client.get_model_metadata(MODEL)["outputs"][0]["name"]
    script = tmp_path / "kserve_client.py"
    script.write_text(_KSERVE_CLIENT)
    done = subprocess.run([python, script, server.url, MODEL, out_name, tmp_path / "x.npy", tmp_path / "out"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"kserve {version}: {report}")
    assert report["server_ready"] and report["server_live"] and report["model_ready"] and not report["other_ready"]
    expected = _infer(client, x)
    for form in ("binary", "json"):
        assert report[form]["id"] == "k-1" and report[form]["dtype"] == "float32"
        np.testing.assert_allclose(np.load(tmp_path / f"out-{form}.npy"), expected, atol=1e-6)
    assert report["int64"]["status"] == 400 and "FP32" in report["int64"]["message"]
