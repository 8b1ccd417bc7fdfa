"""How an API command runs: settings read at entry, the on-call token, one clear line and exit 1 on error."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from mlcd.commands._store import fail, not_text

_TIMEOUT_S = 15.0


def call(
    method: str, path: str, *, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
) -> Any:
    """Send one request to the mlcd API as the CLI (audited `via: cli`); the JSON answer or a clean exit."""
    from mlcd.config import Settings
    from mlcd.errors import ConfigError

    try:
        settings = Settings.load()
    except ConfigError as e:
        raise fail(str(e)) from None
    headers = {"Authorization": f"Bearer {_token(settings)}", "X-Mlcd-Via": "cli"}
    url = settings.effective_api_url.rstrip("/") + path
    try:
        response = httpx.request(method, url, params=params, json=body, headers=headers, timeout=_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise fail(f"cannot reach the mlcd API at {settings.effective_api_url}: {type(e).__name__}") from None
    except httpx.InvalidURL as e:
        raise fail(f"cannot call the mlcd API at {settings.effective_api_url}: {e}") from None
    except UnicodeEncodeError as e:
        raise not_text(e) from None
    if response.status_code >= 400:
        raise fail(f"{response.status_code}: {_problem(response)}")
    return response.json()


def segment(value: str) -> str:
    """`value` as one URL path segment: a "/", "?" or "#" in an id or a name cannot change the path."""
    try:
        return quote(value, safe="")
    except UnicodeEncodeError as e:
        raise not_text(e) from None


def _token(settings: Any) -> str:
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return str(settings.api_token.get_secret_value())
    path = settings.home / "admin-token"
    try:
        return str(path.read_text().strip())
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
