"""Typed dependencies: lifespan resources reach routes only through these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import request_id_of
from service.resources import Resources


def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


def get_request_id(request: Request) -> str:
    return request_id_of(request)


ResourcesDep = Annotated[Resources, Depends(get_resources)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
