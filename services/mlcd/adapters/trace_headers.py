"""W3C trace context on every outside call: one hook per HTTP stack the adapters use.

While mlcd follows a chain (`mlcd.tracing.following`), each request carries `tracing.headers()`: httpx
through an event hook, python-gitlab through its requests session, the kubernetes and KFP clients through
their OpenAPI REST client, MLflow through its own request-header-provider plugin (entry point
`mlflow.request_header_provider` in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from mlcd import tracing


async def _stamp(request: httpx.Request) -> None:
    request.headers.update(tracing.headers())


HTTPX_HOOKS: dict[str, list[Any]] = {"request": [_stamp]}
"""`httpx.AsyncClient(event_hooks=trace_headers.HTTPX_HOOKS)`: each request carries the current trace."""


def traced_session() -> Any:
    """A requests session (python-gitlab's transport) whose requests carry the current trace."""
    import requests

    class TracedSession(requests.Session):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            request.headers.update(tracing.headers())
            return super().send(request, **kwargs)

    return TracedSession()


def stamp_openapi_client(rest_client: Any) -> None:
    """Make an OpenAPI-generated REST client (the kubernetes and KFP clients) send the current trace."""
    if getattr(rest_client, "_mlcd_traced", False):
        return
    rest_client._mlcd_traced = True
    untraced = rest_client.request

    def request(
        method: str, url: str, *args: Any, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Any:
        return untraced(method, url, *args, headers={**(headers or {}), **tracing.headers()}, **kwargs)

    rest_client.request = request


class MlflowTraceHeaders:
    """MLflow's request-header provider plugin: MLflow asks it, on every REST call its client makes, for
    headers to add."""

    def in_context(self) -> bool:
        return tracing.current() is not None

    def request_headers(self) -> dict[str, str]:
        return tracing.headers()
