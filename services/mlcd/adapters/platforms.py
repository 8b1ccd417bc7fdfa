"""One Serving port over several platforms: each model's policy picks its own (`rollout.platform`).

A model whose policy names no platform goes to the installation's default (KServe when
MLCD_KSERVE_NAMESPACE is set). A platform the installation has not configured is a clear error, and a
refused version on the gate, never a silent fallback to another platform.
"""

from __future__ import annotations

from mlcd.errors import ConfigError
from mlcd.policy.book import PolicyBook
from mlcd.ports import Flavors, ModelVersion, Serving, ServingState

SETTING = {
    "kserve": "MLCD_KSERVE_NAMESPACE",
    "seldon": "MLCD_SELDON_NAMESPACE",
    "local": "(no serving setting)",
}


class ServingByPlatform:
    def __init__(self, platforms: dict[str, Serving], default: str, policies: PolicyBook) -> None:
        self.platforms = platforms
        self.default = default
        self.policies = policies

    def _problem(self, model: str) -> tuple[Serving | None, str]:
        policy = self.policies.get(model)
        wanted = (policy.rollout.platform if policy is not None else None) or self.default
        found = self.platforms.get(wanted)
        if found is not None:
            return found, ""
        return None, (
            f"model {model}'s policy asks for rollout.platform {wanted}, which this installation does not "
            f"serve (configured: {', '.join(sorted(self.platforms))}); set {SETTING.get(wanted, wanted)}"
        )

    def for_model(self, model: str) -> Serving:
        found, problem = self._problem(model)
        if found is None:
            raise ConfigError(problem)
        return found

    def servable_problem(self, version: ModelVersion, flavors: Flavors) -> str | None:
        found, problem = self._problem(version.model)
        return problem if found is None else found.servable_problem(version, flavors)

    async def state(self, model: str) -> ServingState:
        return await self.for_model(model).state(model)

    async def set_canary(self, model: str, version: str, artifact_uri: str, percent: int) -> None:
        await self.for_model(model).set_canary(model, version, artifact_uri, percent)

    async def promote(self, model: str, version: str, artifact_uri: str) -> None:
        await self.for_model(model).promote(model, version, artifact_uri)

    async def rollback(self, model: str, version: str | None, artifact_uri: str | None) -> None:
        await self.for_model(model).rollback(model, version, artifact_uri)

    async def ping(self) -> None:
        for platform in self.platforms.values():
            await platform.ping()
