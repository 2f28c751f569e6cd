"""The Open Inference Protocol's REST inference body (KServe v2) with Triton's binary tensor data extension.

Plain functions over bytes and numpy, no FastAPI, so that they can run in a worker thread for
large bodies: :func:`parse_infer` turns a request body into one batch of tiles for the engine and
:func:`encode_infer` turns the engine's answer into a response body. The route
(``routes/models.py``) adds the upload, memory and time limits and the batcher.

Binary tensor data (what ``tritonclient.http`` and KServe's ``InferenceRESTClient`` send by
default): the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by each
binary input's raw little-endian row-major bytes, in input order, each sized by its
``binary_data_size`` parameter. Outputs are returned as binary when their ``binary_data``
parameter or the request's ``binary_data_output`` parameter says so.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mapex_serve.errors import MapexError
from mapex_serve.upload import UploadTooLargeError

__all__ = [
    "ACCEPTED_DATATYPES",
    "HEADER_LENGTH",
    "InferDatatypeError",
    "InferRequestBody",
    "InferRequestError",
    "ModelIO",
    "ParsedInfer",
    "datatype_of",
    "decode_content",
    "encode_infer",
    "parse_infer",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
#: What a specialist takes, converted to its engine's dtype: a float tensor of physical values.
ACCEPTED_DATATYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2"), "FP64": np.dtype("<f8")}
_ALL_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                  "FP16", "FP32", "FP64", "BF16", "BYTES")
_ACCEPTED = "FP32 (FP16 and FP64 are converted to FP32)"


class InferRequestError(MapexError, ValueError):
    """An inference request that breaks the protocol or does not fit the model's input."""


class InferDatatypeError(InferRequestError):
    """A tensor datatype the specialist does not take (it takes floats)."""


class _Part(BaseModel):
    # Clients add fields of their own (KServe's client sends ``model_name``); the protocol allows it.
    model_config = ConfigDict(extra="allow")


class RequestInput(_Part):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(_Part):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequestBody(_Part):
    """``$inference_request`` of the protocol (the JSON header, when binary data follows it)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class ModelIO:
    """A specialist's tensors as the protocol names them: one input batch of tiles, one output."""

    input_name: str
    sample_shape: tuple[int, ...]
    input_dtype: np.dtype
    output_name: str


@dataclass(frozen=True)
class ParsedInfer:
    """A request reduced to what the engine and the answer need."""

    id: str | None
    tiles: np.ndarray
    binary_output: bool  # False: the output goes back as a JSON list


def datatype_of(dtype: np.dtype | str) -> str:
    """The protocol's datatype name of a numpy dtype (``float32`` -> ``FP32``)."""
    kind = np.dtype(dtype)
    names = {"f": "FP", "i": "INT", "u": "UINT"}
    if kind == np.bool_:
        return "BOOL"
    if kind.kind not in names:
        raise ValueError(f"no Open Inference Protocol datatype for {kind}")
    return f"{names[kind.kind]}{kind.itemsize * 8}"


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate, as tritonclient sends), at most ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InferRequestError(f"Content-Encoding {encoding!r} is not accepted; send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise InferRequestError(f"the {encoding} body does not decompress ({e})") from None
    if len(out) > limit:
        raise UploadTooLargeError(f"the decompressed inference request is larger than {limit / 2**20:g} MiB "
                                  f"(MAPEX_MAX_UPLOAD_MB); send fewer tiles per request")
    return out


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
        raise InferRequestError(f"{HEADER_LENGTH}: {header_length!r} is not the length of the JSON header of this "
                                f"{len(body)}-byte body; send the JSON header's size in bytes")
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def _tensor(item: RequestInput, binary: memoryview, offset: int, io: ModelIO) -> tuple[np.ndarray, int]:
    """One input as an array of the engine's dtype, and the offset of the next binary tensor."""
    if item.datatype not in ACCEPTED_DATATYPES:
        what = "is not a datatype of the protocol" if item.datatype not in _ALL_DATATYPES else "is not accepted"
        raise InferDatatypeError(f"input {item.name!r} has datatype {item.datatype!r}, which {what}; "
                                 f"{io.input_name!r} takes {_ACCEPTED}")
    expected = [-1, *io.sample_shape]
    if (len(item.shape) != len(expected) or list(item.shape[1:]) != expected[1:] or item.shape[0] < 1):
        raise InferRequestError(f"input {item.name!r} has shape {item.shape}; {io.input_name!r} takes "
                                f"[N, {', '.join(map(str, io.sample_shape))}] with N >= 1 tiles")
    count = math.prod(item.shape)
    dtype = ACCEPTED_DATATYPES[item.datatype]
    size = (item.parameters or {}).get("binary_data_size")
    if size is not None:
        if item.data is not None:
            raise InferRequestError(f"input {item.name!r} has both 'data' and a binary_data_size; send one of them")
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise InferRequestError(f"input {item.name!r}: binary_data_size {size!r}, but shape {item.shape} of "
                                    f"{item.datatype} is {count * dtype.itemsize} bytes")
        if offset + size > len(binary):
            raise InferRequestError(f"input {item.name!r} declares {size} bytes of binary data but only "
                                    f"{len(binary) - offset} follow the JSON header")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(item.shape)
        return array.astype(io.input_dtype), offset + size
    if item.data is None:
        raise InferRequestError(f"input {item.name!r} has no 'data' and no binary_data_size parameter; send its "
                                f"values as a JSON list or as binary data after the JSON header")
    try:
        array = np.asarray(item.data, dtype=np.float64)
    except (TypeError, ValueError):
        raise InferRequestError(f"input {item.name!r}: 'data' must be a flat (or nested, row-major) list of "
                                f"numbers") from None
    if array.size != count:
        raise InferRequestError(f"input {item.name!r} has {array.size} values; shape {item.shape} needs {count}")
    return array.reshape(item.shape).astype(io.input_dtype), offset


def _finite(tiles: np.ndarray, name: str) -> np.ndarray:
    """Tiles without NaN or infinity: the engine would pass them on, and JSON has no NaN to answer with."""
    if not np.isfinite(tiles).all():
        bad = int(tiles.size - np.count_nonzero(np.isfinite(tiles)))
        raise InferRequestError(f"input {name!r} has {bad} NaN or infinite values; send physical values, nodata "
                                f"filled (e.g. with the band means of the model's manifest, GET /models)")
    return tiles


def parse_infer(body: bytes, header_length: str | None, io: ModelIO) -> ParsedInfer:
    """The tiles and the wanted output form of one request body; an InferRequestError says what was wrong."""
    header, binary = _split(body, header_length)
    try:
        request = InferRequestBody.model_validate_json(header)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise InferRequestError(f"not an Open Inference Protocol inference request ({problems}); send "
                                f'{{"inputs": [{{"name", "shape", "datatype", "data"}}]}}') from None
    if len(request.inputs) != 1 or request.inputs[0].name != io.input_name:
        names = [i.name for i in request.inputs]
        raise InferRequestError(f"inputs {names}; this model takes exactly one input named {io.input_name!r}")
    tiles, used = _tensor(request.inputs[0], binary, 0, io)
    if used != len(binary):
        raise InferRequestError(f"{len(binary)} bytes follow the JSON header but the inputs' binary_data_size "
                                f"parameters add up to {used}")
    params = request.parameters or {}
    binary_output = params.get("binary_data_output") is True
    for out in request.outputs or []:  # an empty list asks for every output, as no list does
        if out.name != io.output_name:
            raise InferRequestError(f"no output {out.name!r}; this model has one output, {io.output_name!r}")
        out_params = out.parameters or {}
        if out_params.get("classification"):
            raise InferRequestError("the classification extension is not served; request the output "
                                    f"{io.output_name!r} (class probabilities) without 'classification'")
        if "binary_data" in out_params:
            binary_output = out_params["binary_data"] is True
    return ParsedInfer(request.id, _finite(tiles, io.input_name), binary_output)


def encode_infer(parsed: ParsedInfer, out: np.ndarray, model_name: str, model_version: str,
                 output_name: str) -> tuple[bytes, dict[str, str]]:
    """The response body and the headers that describe it (content type, and the JSON header's length if binary)."""
    out = np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<"))
    tensor: dict[str, Any] = {"name": output_name, "datatype": datatype_of(out.dtype), "shape": list(out.shape)}
    if parsed.binary_output:
        tensor["parameters"] = {"binary_data_size": out.nbytes}
    else:
        tensor["data"] = out.ravel().tolist()
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": [tensor]}
    if parsed.id is not None:
        answer["id"] = parsed.id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not parsed.binary_output:
        return header, {"content-type": "application/json"}
    return b"".join((header, out.data)), {"content-type": "application/octet-stream", HEADER_LENGTH.lower():
                                          str(len(header))}
