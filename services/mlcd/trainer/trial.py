"""One tuning trial: a run of the model's pipeline with the trial's parameters; prints its metrics.

`python -m mlcd.trainer.trial --run-name NAME --pipeline-ref JSON --parameters JSON --metric M ...
--set NAME:TYPE=VALUE ...` is the command of a Katib trial's container (mlcd's image). It submits the run
(under the trial's name, found again if the pod restarts) on the orchestrator the environment configures
(MLCD_KFP_HOST, else the local runner), waits for it, and prints each asked metric as `name=value`, the
format Katib's StdOut metrics collector reads. On a cluster KFP reports no run outputs, so the metrics come
from the model version the run registered in MLflow (found by its `mlcd.run_name` tag). Exit status 0 when
the run succeeded and reported every metric, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from typing import Any

from mlcd.config import Settings
from mlcd.ports import PipelineRef, Run
from mlcd.trainer import decisions

POLL_S = 2.0
_TYPES: dict[str, Any] = {
    "int": lambda v: int(float(v)),
    "double": float,
    "categorical": str,
    "discrete": lambda v: int(v) if re.fullmatch(r"[+-]?\d+", v) else float(v),
}


def assignment(text: str) -> tuple[str, Any]:
    """`name:type=value` as the trial template writes it, with the value in its type."""
    head, sep, value = text.partition("=")
    name, _, kind = head.partition(":")
    if not sep or not name or kind not in _TYPES:
        raise argparse.ArgumentTypeError(
            f"--set takes NAME:TYPE=VALUE with TYPE in {', '.join(_TYPES)}: {text!r}"
        )
    try:
        return name, _TYPES[kind](value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--set {text!r}: {value!r} is not a {kind}") from e


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlcd.trainer.trial", description=__doc__)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--pipeline-ref", required=True, type=json.loads)
    parser.add_argument("--parameters", required=True, type=json.loads)
    parser.add_argument("--metric", action="append", default=[], required=True)
    parser.add_argument("--set", action="append", default=[], type=assignment, dest="assignments")
    return parser.parse_args(argv)


async def run_trial(args: argparse.Namespace, settings: Settings) -> int:
    from mlcd.adapters import kfp, mlflow

    orchestrator = kfp.build(settings)
    name = args.run_name
    parameters = {**args.parameters, **dict(args.assignments), "run_name": name, "run_alias": ""}
    stopping = asyncio.Event()
    # Katib deletes a trial's pod (and mlcd's Optuna worker its trials) with SIGTERM: stop the run too.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        run: Run = await orchestrator.find_run(name) or await orchestrator.submit(
            name, PipelineRef(**args.pipeline_ref), parameters
        )
        while not run.finished and not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_S)
            run = await orchestrator.get_run(run.run_id)
        if stopping.is_set() and not run.finished:
            await orchestrator.terminate_run(run.run_id)
            print(f"trial run {name} terminated: the trial was stopped", file=sys.stderr)
            return 143
    finally:
        close = getattr(orchestrator, "close", None)
        if close is not None:
            await close()
    if run.state != "SUCCEEDED":
        print(
            f"trial run {name} ended {run.state}: {decisions.failure_reason(run)}\n{run.log_tail}",
            file=sys.stderr,
        )
        return 1
    metrics = decisions.training_metrics(run.outputs)
    if not metrics:
        version = await mlflow.build(settings).version_by_tag(
            str(parameters.get("model_name", "")), decisions.RUN_NAME_TAG, name
        )
        metrics = version.metrics if version is not None else {}
    missing = [m for m in args.metric if m not in metrics]
    if missing:
        print(
            f"trial run {name} reported no {', '.join(missing)} (it reported {sorted(metrics)})",
            file=sys.stderr,
        )
        return 1
    for metric in args.metric:
        print(f"{metric}={metrics[metric]!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    return asyncio.run(run_trial(args, Settings()))


if __name__ == "__main__":
    sys.exit(main())
