"""API tokens and webhook secrets: constant-time checks, groups for authorisation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from mlcd.errors import ConfigError


def secret_matches(presented: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an unset expected secret never matches (the source stays closed)."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    groups: list[str] = Field(default_factory=list)
    token_sha256: str
    identity: str | None = Field(None, description="The person holding the token; default: name.")
    gitlab_username: str | None = Field(
        None,
        description="Their GitLab username: API and merge-request decisions count as one person's.",
    )


@dataclass(frozen=True)
class Identity:
    """Who holds a token: the token's name, its groups, the person and their GitLab username."""

    name: str
    groups: frozenset[str]
    person: str = ""
    gitlab_username: str = ""

    @property
    def actor(self) -> str:
        """The one name decisions are recorded under: the GitLab username when known, so approving in a
        merge request and through the API count as the same person."""
        return self.gitlab_username or self.person or self.name

    def is_author(self, author: str) -> bool:
        """True when `author` (a GitLab username, or a name) names this person."""
        names = {self.name, self.person, self.gitlab_username} - {""}
        return bool(author) and author.lower() in {name.lower() for name in names}

    def in_any(self, groups: list[str] | frozenset[str]) -> bool:
        return "admin" in self.groups or bool(self.groups & set(groups))


class TokenBook:
    """The API tokens of `MLCD_API_TOKENS_FILE`, only their SHA-256 kept."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, path: Path) -> TokenBook:
        """The file's tokens; a ConfigError says where it is broken, never quoting it (it may hold tokens)."""
        try:
            return cls(_ENTRIES.validate_python(yaml.safe_load(path.read_text()) or []))
        except OSError as e:
            raise ConfigError(f"API tokens file {path} is unreadable: {e}") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            # `from None`: the YAML error's own text quotes the offending line
            raise ConfigError(f"API tokens file {path} is unreadable: {problem}{where}") from None
        except ValidationError as e:
            problems = "; ".join(
                _problem(error) for error in e.errors(include_input=False, include_url=False)
            )
            # `from None`: the validation error's own text quotes the offending values
            raise ConfigError(f"API tokens file {path} is unreadable: {problems}") from None

    def identify(self, token: str | None) -> Identity | None:
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        found: TokenEntry | None = None
        for entry in self._entries:  # compare with every entry so timing does not reveal which matched
            if hmac.compare_digest(digest, entry.token_sha256.lower()):
                found = entry
        if found is None:
            return None
        return Identity(
            found.name, frozenset(found.groups), found.identity or found.name, found.gitlab_username or ""
        )


_ENTRIES = TypeAdapter(list[TokenEntry])


def _problem(error: ErrorDetails) -> str:
    loc = error["loc"]
    if not loc:
        fields = "name, groups, token_sha256, identity, gitlab_username"
        return f"the file should be a list of {{{fields}}}: {error['msg']}"
    entry = f"entry {int(loc[0]) + 1}"
    if error["type"] == "extra_forbidden":  # the unknown key itself might be a pasted token
        return f"{entry} has a field other than name, groups, token_sha256, identity and gitlab_username"
    return " ".join([entry, *(f"field {part}" for part in loc[1:])]) + f": {error['msg']}"


def ensure_tokens_file(path: Path) -> str | None:
    """Write a tokens file with a fresh admin token if none exists; returns that token, else None."""
    if path.exists():
        return None
    token = "mlcd_" + secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "name": "admin",
        "groups": ["admin", "oncall"],
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    path.write_text(yaml.safe_dump([entry]))
    path.chmod(0o600)
    (path.parent / "admin-token").write_text(token + "\n")
    (path.parent / "admin-token").chmod(0o600)
    return token
