"""Files resolve the same in the image as in a checkout.

No container engine runs here, so the test reads the Dockerfile's final stage (its COPY, WORKDIR and ENV
lines), lays a folder out exactly as they describe, overlays the environment and the mounted policy files
the Helm chart gives a pod, and runs the validator's suite lookup and check and the builder's fetch and
compile from it. The image's paths are absolute (/app, /etc/mlcd, /var/lib/mlcd): they are rewritten under
a temporary root, the one liberty taken; everything relative is left as the image has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python
import pandas as pd
import pytest
import yaml

from mlcd.adapters import gitlab, kfp_compiler
from mlcd.builder import triggers
from mlcd.config import Settings
from mlcd.policy.book import PolicyBook
from mlcd.validator import suite
from tests.support.image_layout import Image, final_stage, lay_out

ROOT = Path(__file__).parents[2]
CHART = ROOT / "helm" / "mlcd"


def pod_env(root: Path, image: Image) -> tuple[dict[str, str], dict[str, str]]:
    """The validator pod's environment (image ENV, then the chart's ConfigMap) and its policy files."""
    policies = {
        path.name: path.read_text() for path in (ROOT / "policies").glob("*.yaml")
    }  # an operator's policies in the chart's values, as docs/production.md shows
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(
            values={"policies": {"files": policies}}, name="prod", namespace="mlcd", is_install=True
        )
    manifests = [
        doc
        for path, text in files.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    config = next(
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "prod-mlcd-config"
    )
    env = {**image.env, **config["data"]}
    deployment = next(
        m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "prod-mlcd-validator"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["policies"] == env["MLCD_POLICIES_DIR"]
    mounted = next(
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "prod-mlcd-policies"
    )
    return env, dict(mounted["data"])


def under(root: Path, path: str) -> str:
    return str(root / path.lstrip("/"))


@pytest.fixture
def image_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    image = final_stage()
    root = tmp_path / "image"
    lay_out(image, root)
    env, policy_files = pod_env(root, image)
    # The pod mounts the chart's policy ConfigMap over the image's own policies folder.
    policies = Path(under(root, env["MLCD_POLICIES_DIR"]))
    shutil.rmtree(policies, ignore_errors=True)
    policies.mkdir(parents=True)
    for name, text in policy_files.items():
        (policies / name).write_text(text)
    for name in [n for n in os.environ if n.startswith("MLCD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("MLCD_"):
            absolute = name in {"MLCD_HOME", "MLCD_POLICIES_DIR", "MLCD_PIPELINES_DIR"}
            monkeypatch.setenv(name, under(root, value) if absolute else value)
    workdir = Path(under(root, image.workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(workdir)
    return Settings.load()


def test_the_image_ships_the_pipelines_where_the_chart_points() -> None:
    image = final_stage()
    with helm_python.Chart.load(CHART) as chart:
        chart_dir = chart.values["config"]["pipelinesDir"]

    assert ("pipelines", chart_dir) in image.copies
    assert image.env["MLCD_PIPELINES_DIR"] == chart_dir
    assert image.workdir == str(Path(chart_dir).parent)


def test_the_validator_finds_and_runs_the_policy_suite_in_the_image(
    image_settings: Settings, tmp_path: Path
) -> None:
    book = PolicyBook(image_settings.policies_dir)
    policy = book.get("wine_quality")
    assert policy is not None and policy.data is not None, book.errors
    path = suite.suite_path(image_settings, policy.data.suite)
    batches = tmp_path / "batches"
    subprocess.run(
        [sys.executable, str(image_settings.pipelines_dir / "wine_quality/make_batches.py"), str(batches)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    loaded = suite.load(path)

    clean = suite.summarise(suite.run(loaded, pd.read_csv(batches / "clean.csv")))
    corrupt = suite.summarise(suite.run(loaded, pd.read_csv(batches / "corrupt.csv")))
    assert path.is_relative_to(image_settings.source_root) and path.is_file()
    assert clean and all(e.success for e in clean)
    assert "column 'proline' is missing" in suite.reason(corrupt)


async def test_the_builder_fetches_and_compiles_the_pipeline_in_the_image(
    image_settings: Settings, tmp_path: Path
) -> None:
    book = PolicyBook(image_settings.policies_dir)
    policy = book.get("wine_quality")
    assert policy is not None, book.errors
    code_host = gitlab.build(image_settings)  # no GitLab configured: the image's working tree

    folder = await code_host.fetch_tree(
        "ml/wine-quality", "main", triggers.pipeline_folder(policy), tmp_path / "workspace"
    )
    package = tmp_path / "wine_quality.yaml"
    await kfp_compiler.compile_in_child(folder, package, image_settings.build_timeout_s)

    spec = next(yaml.safe_load_all(package.read_text()))
    assert spec["pipelineInfo"]["name"] and spec["root"]["dag"]["tasks"]
