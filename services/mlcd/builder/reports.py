"""What the builder tells people: commit status names and texts, links, the merge-request note (no I/O)."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from mlcd import events
from mlcd.config import Settings
from mlcd.ports import PipelineRef

_STATUS_DESCRIPTION_LIMIT = 140


def status_name(model: str) -> str:
    return f"mlcd/pipeline: {model}"


def note_marker(model: str) -> str:
    return f"mlcd:builder:{model}"


def one_line(text: str, limit: int = _STATUS_DESCRIPTION_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def published_link(settings: Settings, model: str, ref: PipelineRef) -> str:
    """The pipeline version in the Kubeflow UI when there is one, else the model in mlcd's API."""
    if settings.kfp_host and ref.pipeline_id and ref.version_id:
        return (
            f"{settings.kfp_host.rstrip('/')}/#/pipelines/details/{ref.pipeline_id}/version/{ref.version_id}"
        )
    return f"{settings.effective_api_url}/api/v1/models/{model}"


def failure_link(settings: Settings, model: str) -> str:
    """The journal's build failures of the model, newest first."""
    query = urlencode({"model": model, "type": events.PipelineBuildFailed.type})
    return f"{settings.effective_api_url}/api/v1/events?{query}"


def _quoted(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.strip()}\n{fence}"


def merge_request_note(model: str, pipeline: str, commit: str, error: str | None) -> str:
    """The note's text: compiles or not, at which commit, the compiler's error quoted."""
    if error is None:
        return (
            f"#### ✅ mlcd: pipeline `{pipeline}` of model `{model}` compiles\n\n"
            f"Checked at commit {commit[:8]}; mlcd publishes it as a new pipeline version once it is merged."
        )
    return (
        f"#### ❌ mlcd: pipeline `{pipeline}` of model `{model}` does not compile\n\n"
        f"Checked at commit {commit[:8]}. The compiler said:\n\n{_quoted(error)}"
    )


def features_status_name(model: str) -> str:
    return f"mlcd/features: {model}"


def features_note_marker(model: str) -> str:
    return f"mlcd:features:{model}"


_PLAN_LIMIT = 30_000  # GitLab takes a million characters; a plan longer than this is read in the CLI


def features_note(model: str, path: str, commit: str, plan: str | None, error: str | None) -> str:
    """The merge request's note on its feature repository: Feast's plan quoted, or why there is none."""
    if error is not None:
        return (
            f"#### ❌ mlcd: feature repository `{path}` of model `{model}` does not plan\n\n"
            f"Checked at commit {commit[:8]}. Feast said:\n\n{_quoted(error)}"
        )
    shown = plan or "(Feast printed nothing)"
    if len(shown) > _PLAN_LIMIT:
        shown = shown[:_PLAN_LIMIT] + f"\n… ({len(shown) - _PLAN_LIMIT} more characters: run `feast plan`)"
    return (
        f"#### 📋 mlcd: `feast plan` for feature repository `{path}` of model `{model}`\n\n"
        f"Planned at commit {commit[:8]}; mlcd runs `feast apply` once it is merged.\n\n{_quoted(shown)}"
    )
