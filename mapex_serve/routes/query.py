"""A route's query parameters, read from its endpoint's signature: what the fast lane passes on, and what a multipart
field must not be named (``upload.OptionFieldError``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, get_args, get_origin, get_type_hints

from fastapi import params

__all__ = ["query_parameters"]


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
