"""Webhook credentials under bad input: a delivery is let in or refused as Unauthorized with a reason.

Authentication runs before anything else, for anyone who can reach the port: an exception here is a 500
that needs no secret at all to provoke.
"""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import strategies as st

from mlcd.config import Settings
from mlcd.errors import Unauthorized
from mlcd.ingest.authentication import authenticate
from tests.support import webhook_credentials as credentials
from tests.support.inputs_tried import explore

NOW = 1_790_000_000.0
KEYS = credentials.WebhookSecrets.fresh()
SETTINGS = Settings.model_validate(KEYS.settings())
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"))
ODD_HEADER = st.one_of(
    HEADER_TEXT,
    st.sampled_from(
        [
            "",
            " ",
            "9" * 400,
            "-" + "9" * 400,
            "1e9",
            "0x10",
            " 1790000000 ",
            "1_790_000_000",
            "+1790000000",
            "Bearer",
            "Bearer ",
            "bearer  x",
            "v1,",
            "v1",
            ",",
            "v1,a v2,b v1,c",
            "v1," + "A" * 10_000,
            "whsec_",
        ]
    ),
)


class Attempt(NamedTuple):
    source: credentials.Source
    variant: str
    headers: dict[str, str]
    body: bytes


@st.composite
def deliveries(draw: st.DrawFn) -> Attempt:
    source = draw(st.sampled_from(credentials.SOURCES))
    variant = draw(st.sampled_from(credentials.VARIANTS[source]))
    sent = credentials.delivery(source, KEYS, variant, now=NOW)
    headers = {name.lower(): value for name, value in sent.headers.items()}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([*sorted(headers), "authorization", "x-mlflow-timestamp"]))
        how = draw(st.sampled_from(["drop", "replace", "append", "prepend"]))
        if how == "drop":
            headers.pop(name, None)
        elif how == "replace":
            headers[name] = draw(ODD_HEADER)
        else:
            extra = draw(ODD_HEADER)
            headers[name] = (
                headers.get(name, "") + extra if how == "append" else extra + headers.get(name, "")
            )
    return Attempt(source, variant, headers, sent.body)


def test_any_credential_headers_are_let_in_or_refused_with_a_reason() -> None:
    def check(attempt: Attempt) -> None:
        try:
            authenticate(attempt.source, SETTINGS, attempt.headers, attempt.body, NOW)
        except Unauthorized as e:
            assert str(e).strip()
            return
        # Mangling a missing or wrong credential must never turn it into a right one.
        assert attempt.variant == "right", f"a {attempt.variant!r} {attempt.source} credential was let in"

    assert explore("webhook authentication", deliveries(), check, 400) >= 100
