"""Hypothesis strategies for bad input: documents that are nearly valid, and text callers really send.

`near_valid(document)` starts from a known-good JSON or YAML document (a fixture, a policy file) and
changes one to three places in it: a field dropped, renamed, retyped, oversized, or given odd unicode or
URL-encoding. Paired with arbitrary bytes and arbitrary JSON it covers what a sender can get wrong.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

Path = tuple[str | int, ...]

# Every code point, lone surrogates included: JSON can carry them as \udXXX escapes.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
ODD_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            "\udcff",
            "\ufeff",
            "e\u0301",
            "\u202eevil",
            "🦀" * 3,
            "%",
            "%ZZ",
            "%00",
            "%ed%a0%80",
            "%2F..%2F..%2Fetc%2Fpasswd",
            "a+b%2Bc",
            "%252F",
            "../../x",
            "0" * 40,
            "refs/heads/",
            "s3:ObjectCreated:",
        ]
    ),
    st.text(ANY_CHAR, max_size=40),
)
HUGE = st.sampled_from(
    ["x" * 20_000, 10**40, -(10**40), 1e308, float("inf"), float("nan"), list(range(5000))]
)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), ODD_TEXT
)
ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(ODD_TEXT, inner, max_size=4)),
    max_leaves=12,
)
# What a value can be turned into: another type, an oversized value, odd text.
_REPLACEMENTS = st.one_of(JSON_SCALARS, st.just([]), st.just({}), HUGE, ODD_TEXT, ANY_JSON)


def paths(document: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every place in a JSON-like tree, the root excluded."""
    if isinstance(document, dict):
        items: Any = document.items()
    elif isinstance(document, list):
        items = enumerate(document)
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def _parent(document: Any, path: Path) -> Any:
    node = document
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def _mutate_once(draw: st.DrawFn, document: Any) -> Any:
    places = list(paths(document))
    if not places:
        return copy.deepcopy(draw(_REPLACEMENTS))
    path = draw(st.sampled_from(places))
    parent: Any = _parent(document, path)
    last: Any = path[-1]
    how = draw(
        st.sampled_from(["odd text", "replace", "drop", "rename", "url-encode", "odd text", "duplicate"])
    )
    if how == "drop":
        del parent[last]
    elif how == "rename" and isinstance(parent, dict):
        parent[draw(st.sampled_from([str(last).upper(), f"{last}_", str(last).replace("_", ""), " "]))] = (
            parent.pop(last)
        )
    elif how == "odd text":
        parent[last] = draw(ODD_TEXT)
    elif how == "url-encode" and isinstance(parent[last], str):
        oddity = draw(st.sampled_from(["%25", "%2F", "+", "%ZZ", "%ed%a0%80", "%00", "%"]))
        once = quote(parent[last].encode("utf-8", "surrogatepass"))
        parent[last] = draw(st.sampled_from([once, quote(once)])) + oddity
    elif how == "duplicate" and isinstance(parent, list):
        parent.extend(copy.deepcopy([parent[last]] * draw(st.integers(1, 50))))
    else:
        parent[last] = copy.deepcopy(draw(_REPLACEMENTS))
    return document


@st.composite
def near_valid(draw: st.DrawFn, document: Any, max_changes: int = 3) -> Any:
    """`document` with one to `max_changes` places changed; the original is left untouched."""
    changed = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, max_changes))):
        changed = draw(_mutate_once(changed))
    return changed


def json_bytes(value: Any) -> bytes:
    """JSON as a sender would put it on the wire (lone surrogates as \\udXXX escapes, NaN as NaN)."""
    return json.dumps(value).encode()


def bodies(documents: list[Any]) -> st.SearchStrategy[bytes]:
    """Request bodies around valid `documents`: mostly near-valid variants, then broken bytes and junk."""
    near = st.sampled_from(documents).flatmap(near_valid).map(json_bytes)
    broken = st.sampled_from(documents).map(json_bytes).flatmap(_broken)
    # Listed three times so that half the inputs are near-valid: those reach deepest into a parser.
    return st.one_of(near, near, near, broken, ANY_JSON.map(json_bytes), st.binary(max_size=200))


def _broken(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(0, len(valid)).map(lambda cut: valid[:cut]),
        st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=8)).map(
            lambda at: valid[: at[0]] + at[1] + valid[at[0] :]
        ),
        st.sampled_from(
            [
                valid,
                b"\xef\xbb\xbf" + valid,
                valid.decode().encode("utf-16"),
                b"[" * 5_000 + b"]" * 5_000,
                b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
                b"NaN",
                b"null",
                b"",
            ]
        ),
    )
