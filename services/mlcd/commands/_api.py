"""How an API command runs: settings read at entry, the token, one clear line and exit 1 on any error.

The API is found at MLCD_API_URL, else where the running `mlcd up` recorded it in MLCD_HOME, else
http://MLCD_HTTP_HOST:MLCD_HTTP_PORT. The token is MLCD_API_TOKEN, else the admin token `mlcd up` wrote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import typer

if TYPE_CHECKING:
    from mlcd.config import Settings

_TIMEOUT_S = 15.0


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` on stderr; raise the returned Exit to leave with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def not_text(error: UnicodeEncodeError) -> typer.Exit:
    """Exit for an argument holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    around = error.object[max(0, error.start - 10) : error.end + 10]
    return fail(f"an argument is not UTF-8 text: {around!r}")


@dataclass(frozen=True)
class _Target:
    url: str
    headers: dict[str, str]


def call(
    method: str, path: str, *, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
) -> Any:
    """Send one request to the mlcd API as the CLI (audited `via: cli`); the JSON answer or a clean exit."""
    target = _target()
    try:
        response = httpx.request(
            method, target.url + path, params=params, json=body, headers=target.headers, timeout=_TIMEOUT_S
        )
    except httpx.HTTPError as e:
        raise fail(f"cannot reach the mlcd API at {target.url}: {type(e).__name__}") from None
    except httpx.InvalidURL as e:
        raise fail(f"cannot call the mlcd API at {target.url}: {e}") from None
    except UnicodeEncodeError as e:
        raise not_text(e) from None
    if response.status_code >= 400:
        raise fail(f"{response.status_code}: {_problem(response)}")
    try:
        return response.json()
    except ValueError:
        raise fail(f"the mlcd API at {target.url} answered {path} with something other than JSON") from None


def stream(
    path: str, *, params: dict[str, Any] | None = None, timeout_s: float | None = None
) -> Iterator[dict[str, Any]]:
    """Follow a Server-Sent Events route: each `data:` line's JSON object, until the server ends it or,
    with `timeout_s`, until that many seconds have passed (then the iteration just ends)."""
    target = _target()
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    timeout = httpx.Timeout(_TIMEOUT_S, read=timeout_s)  # a quiet journal sends only keep-alives
    headers = {**target.headers, "Accept": "text/event-stream"}
    try:
        with httpx.stream(
            "GET", target.url + path, params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise fail(f"{response.status_code}: {_problem(response)}")
            kind = "message"
            for line in response.iter_lines():
                if line.startswith(": following"):
                    typer.echo(line[2:] + " (Ctrl-C to stop)", err=True)
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if kind == "error":
                        raise fail(f"the stream ended: {data.get('error', data)}")
                    yield data
                elif not line:
                    kind = "message"
                if deadline is not None and time.monotonic() >= deadline:
                    return
    except httpx.ReadTimeout:
        if deadline is not None and time.monotonic() >= deadline - 0.05:
            return
        raise fail(f"the mlcd API at {target.url} stopped answering") from None
    except httpx.HTTPError as e:
        raise fail(f"lost the mlcd API at {target.url}: {type(e).__name__}") from None
    except httpx.InvalidURL as e:
        raise fail(f"cannot call the mlcd API at {target.url}: {e}") from None
    except UnicodeEncodeError as e:
        raise not_text(e) from None
    raise fail(f"the mlcd API at {target.url} closed the stream")


def segment(value: str) -> str:
    """`value` as one URL path segment: a "/", "?" or "#" in an id or a name cannot change the path."""
    try:
        return quote(value, safe="")
    except UnicodeEncodeError as e:
        raise not_text(e) from None


def _target() -> _Target:
    from mlcd.config import Settings
    from mlcd.errors import ConfigError
    from mlcd.local import endpoint

    try:
        settings = Settings.load()
    except ConfigError as e:
        raise fail(str(e)) from None
    recorded = endpoint.read(settings.home) if settings.api_url is None else None
    url = (recorded.url if recorded else settings.effective_api_url).rstrip("/")
    token_file = recorded.token_file if recorded and recorded.token_file else settings.home / "admin-token"
    return _Target(url, {"Authorization": f"Bearer {_token(settings, token_file)}", "X-Mlcd-Via": "cli"})


def _token(settings: Settings, path: Path) -> str:
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return str(settings.api_token.get_secret_value())
    try:
        return path.read_text().strip()
    except OSError:
        raise fail(f"no API token: set MLCD_API_TOKEN or run `mlcd up` once to write {path}") from None


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        message = str(body.get("error") or body.get("detail") or body)
        return message + (f" (gate is {body['state']})" if "state" in body else "")
    return str(body)
