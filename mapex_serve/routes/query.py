"""A route's query parameters, read from its endpoint's signature: what the fast lane passes on, what a multipart
body may give as fields instead (``with_fields``), and what else in a query is refused (``UnknownOptionError``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Literal, get_args, get_origin, get_type_hints

from fastapi import Request, params

from mapex_serve.errors import MapexError
from mapex_serve.upload import OptionFieldError

__all__ = ["UnknownOptionError", "check_options", "declare_option_fields", "query_parameters", "with_fields"]


class UnknownOptionError(MapexError, ValueError):
    """A query parameter the route does not take (a misspelt option): ignored, the answer would come without it."""


def query_parameters(endpoint: Callable[..., object]) -> dict[str, tuple[str, ...] | None]:
    """``endpoint``'s query parameters, each with its values where they are a closed set (a ``Literal``, or an
    optional one), else None: read from its signature, so that every parameter it gains is counted."""
    out = {}
    for name, hint in get_type_hints(endpoint, include_extras=True).items():
        if get_origin(hint) is Annotated and any(isinstance(m, params.Query) for m in hint.__metadata__):
            inner = get_args(hint)[0]  # Literal[...], or Literal[...] | None
            literal = next((a for a in (inner, *get_args(inner)) if get_origin(a) is Literal), None)
            out[name] = get_args(literal) if literal is not None else None
    return out


def check_options(request: Request, known: Collection[str]) -> None:
    """Refuse a query parameter that is not one of ``known``, naming the closest one (``unit=`` for ``units=``)."""
    for name in request.query_params:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise UnknownOptionError(f"{request.url.path} takes no query parameter {name!r}{hint} (it takes "
                                     f"{', '.join(known)})")


def with_fields(query: Mapping[str, str | None], fields: Mapping[str, str],
                closed: Mapping[str, tuple[str, ...] | None]) -> dict[str, str | None]:
    """The options of a request: its query's, and those its multipart body gives as fields (``-F units=dB``), each
    of a closed set (``closed``) checked as FastAPI checks the query's; one given both ways must agree."""
    out = dict(query)
    for name, value in fields.items():
        if out.get(name) is not None and out[name] != value:
            raise OptionFieldError(f"{name} is given twice, {out[name]!r} in the query and {value!r} as a multipart "
                                   f"field; give it once")
        if (allowed := closed.get(name)) and value not in allowed:
            raise OptionFieldError(f"the multipart field {name}={value!r} is not one of {', '.join(allowed)}")
        out[name] = value
    return out


def declare_option_fields(body: dict, options: Mapping[str, tuple[str, ...] | None]) -> None:
    """Declare ``options`` as fields of the multipart body in a route's ``openapi_extra`` ``body`` (made before its
    endpoint, whose signature they are read from): the OpenAPI schema says what the route takes."""
    schema = body["requestBody"]["content"]["multipart/form-data"]["schema"]
    schema["properties"] |= {name: {"type": "string", "description": "as the query parameter of that name",
                                    **({"enum": list(closed)} if closed else {})} for name, closed in options.items()}
