"""The image as the Dockerfile describes it, without a container engine: its final stage's ENV, WORKDIR and
COPY lines, and a folder laid out as those COPY lines (and .dockerignore) would fill the image."""

from __future__ import annotations

import fnmatch
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Image:
    """What the Dockerfile's final stage puts where."""

    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[str, str]] = field(default_factory=list)  # (build-context source, image path)
    from_stages: list[str] = field(default_factory=list)  # COPY --from=… destinations (built, not copied)
    workdir: str = "/"


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, pending = [], ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def final_stage(dockerfile: str | None = None) -> Image:
    """The last stage of the Dockerfile (the repository's own by default)."""
    dockerfile = dockerfile if dockerfile is not None else (ROOT / "Dockerfile").read_text()
    image = Image()
    for instruction, args in instructions(dockerfile):
        if instruction == "FROM":
            image = Image()
        elif instruction == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                image.env[name] = value.replace("$PATH", "").rstrip(":")
        elif instruction == "WORKDIR":
            image.workdir = args
        elif instruction == "COPY":
            words = shlex.split(args)
            flags = [w for w in words if w.startswith("--")]
            *sources, destination = [w for w in words if not w.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                image.from_stages.append(destination)
            else:
                image.copies += [(source, destination) for source in sources]
    return image


def ignored(patterns: list[str], relative: str) -> bool:
    return any(
        fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(Path(relative).name, p.removeprefix("**/"))
        for p in patterns
    )


def lay_out(image: Image, root: Path) -> None:
    """The build context's files at the image paths, minus what .dockerignore keeps out."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source, destination in image.copies:
        assert not ignored(patterns, source), f"{source} is copied but .dockerignore leaves it out"
        target = root / destination.lstrip("/")
        shutil.copytree(
            ROOT / source,
            target,
            ignore=lambda folder, names: [
                n for n in names if ignored(patterns, str((Path(folder) / n).relative_to(ROOT)))
            ],
        )
