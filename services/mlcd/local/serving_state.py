"""What local serving routes, per model: the stable revision and an optional canary with its share.

Persisted as JSON under MLCD_HOME (written atomically), so a restart serves the same revisions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, Field


class Revision(BaseModel):
    version: str
    uri: str


class Canary(Revision):
    percent: int = Field(ge=0, le=100)


class Routing(BaseModel):
    stable: Revision | None = None
    canary: Canary | None = None

    def split(self) -> dict[str, int]:
        """Traffic percent by version."""
        shares: dict[str, int] = {}
        canary_share = self.canary.percent if self.canary is not None else 0
        if self.stable is not None:
            shares[self.stable.version] = 100 - canary_share if self.canary is not None else 100
        if self.canary is not None:
            shares[self.canary.version] = shares.get(self.canary.version, 0) + canary_share
        return shares


class ServingFile(BaseModel):
    models: dict[str, Routing] = Field(default_factory=dict)


def load(path: Path) -> ServingFile:
    if not path.exists():
        return ServingFile()
    return ServingFile.model_validate_json(path.read_text())


def save(path: Path, state: ServingFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(state.model_dump(mode="json"), indent=2))
    os.replace(partial, path)
