"""mlcd's ML Metadata writer: a child process run by `mlcd.adapters.mlmd` in a virtualenv of its own.

ml-metadata 1.17.1 (the newest with a Python 3.11 wheel) pins protobuf<5 and mlcd's environment has
protobuf 6, so this file imports nothing of mlcd: only the standard library and ml_metadata. It reads
JSON lines on stdin: first `{"connect": {...}}` (sqlite, mysql or grpc), then `{"steps": [...]}` as
many times as needed; it answers each line with one JSON line on stdout, `{"ok": true}` or
`{"error": "...", "retryable": bool}`.

Writing a step twice changes nothing: artifacts, executions and contexts are found by their external
ids (derived from event ids and dataset names), events are added once, a finished execution is not
set back to RUNNING.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ml_metadata import errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

ARTIFACT_TYPES = {
    "data batch": "mlcd.DataBatch",
    "validation result": "mlcd.ValidationResult",
    "model version": "mlcd.ModelVersion",
}
EXECUTION_TYPES = {
    "validation": "mlcd.Validation",
    "training": "mlcd.TrainingRun",
    "gate": "mlcd.Gate",
    "rollout": "mlcd.Rollout",
    "rollback": "mlcd.Rollback",
}
CONTEXT_TYPE = "mlcd.Model"
_STATES = {
    "START": mlmd.Execution.RUNNING,
    "RUNNING": mlmd.Execution.RUNNING,
    "COMPLETE": mlmd.Execution.COMPLETE,
    "FAIL": mlmd.Execution.FAILED,
}
_FINISHED = {mlmd.Execution.COMPLETE, mlmd.Execution.FAILED}
_RETRYABLE = (
    errors.UnavailableError,
    errors.DeadlineExceededError,
    errors.AbortedError,
    errors.AlreadyExistsError,  # another writer created the node first: the retry finds it
    errors.ResourceExhaustedError,
)


def connect(spec: dict[str, Any]) -> metadata_store.MetadataStore:
    if "grpc" in spec:
        client = mlmd.MetadataStoreClientConfig(host=spec["grpc"]["host"], port=int(spec["grpc"]["port"]))
        return metadata_store.MetadataStore(client)
    config = mlmd.ConnectionConfig()
    if "mysql" in spec:
        m = spec["mysql"]
        config.mysql.host = m["host"]
        config.mysql.port = int(m["port"])
        config.mysql.database = m["database"]
        config.mysql.user = m["user"]
        config.mysql.password = m.get("password", "")
    else:
        config.sqlite.filename_uri = spec["sqlite"]["path"]
        config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config, enable_upgrade_migration=True)


class Writer:
    def __init__(self, store: metadata_store.MetadataStore) -> None:
        self.store = store
        self._types: dict[str, int] = {}

    def write(self, step: dict[str, Any]) -> None:
        execution = self._execution(step)
        known: set[tuple[int, int]] = set()
        if execution.HasField("id"):
            known = {(e.artifact_id, e.type) for e in self.store.get_events_by_execution_ids([execution.id])}
        pairs: list[tuple[mlmd.Artifact, mlmd.Event | None]] = []
        for kind, datasets in ((mlmd.Event.INPUT, step["inputs"]), (mlmd.Event.OUTPUT, step["outputs"])):
            for dataset in datasets:
                artifact = self._artifact(dataset)
                linked = artifact.HasField("id") and (artifact.id, kind) in known
                pairs.append((artifact, None if linked else mlmd.Event(type=kind)))
        context = self._context(step["model"])
        self.store.put_execution(
            execution,
            pairs,
            [context],
            reuse_context_if_already_exist=True,
            reuse_artifact_if_already_exist_by_external_id=True,
        )

    def _execution(self, step: dict[str, Any]) -> mlmd.Execution:
        external_id = f"mlcd:{step['job']}:{step['run_key']}"
        found = _found(self.store.get_executions_by_external_ids, [external_id])
        if found:
            execution = found[0]
        else:
            execution = mlmd.Execution(
                type_id=self._execution_type(step["job"]), name=external_id, external_id=external_id
            )
            execution.properties["model"].string_value = step["model"]
            execution.properties["run_key"].string_value = step["run_key"]
        state = _STATES[step["state"]]
        if not (execution.last_known_state in _FINISHED and state not in _FINISHED):
            execution.last_known_state = state
        custom = execution.custom_properties
        custom[f"{step['state'].lower()}_event_id"].string_value = step["event_id"]
        custom[f"{step['state'].lower()}_time"].string_value = step["time"]
        if step.get("error"):
            custom["error"].string_value = step["error"]
        _set_all(custom, step.get("facts", {}))
        return execution

    def _artifact(self, dataset: dict[str, Any]) -> mlmd.Artifact:
        key = f"{dataset['namespace']}/{dataset['name']}"
        external_id = f"mlcd:{dataset['kind']}:{key}@{dataset.get('version', '')}"
        found = _found(self.store.get_artifacts_by_external_ids, [external_id])
        if found:
            artifact = found[0]
        else:
            artifact = mlmd.Artifact(
                type_id=self._artifact_type(dataset["kind"]),
                name=external_id,
                external_id=external_id,
                uri=dataset.get("uri") or key,
                state=mlmd.Artifact.LIVE,
            )
            artifact.properties["namespace"].string_value = dataset["namespace"]
            artifact.properties["name"].string_value = dataset["name"]
            artifact.properties["version"].string_value = dataset.get("version", "")
        _set_all(artifact.custom_properties, dataset.get("facts", {}))
        return artifact

    def _context(self, model: str) -> mlmd.Context:
        found = _found(self.store.get_contexts_by_external_ids, [f"mlcd:model:{model}"])
        if found:
            return found[0]
        self._context_type()
        return mlmd.Context(type_id=self._types[CONTEXT_TYPE], name=model, external_id=f"mlcd:model:{model}")

    def _artifact_type(self, kind: str) -> int:
        name = ARTIFACT_TYPES[kind]
        if name not in self._types:
            t = mlmd.ArtifactType(name=name)
            for p in ("namespace", "name", "version"):
                t.properties[p] = mlmd.STRING
            self._types[name] = self.store.put_artifact_type(t, can_add_fields=True)
        return self._types[name]

    def _execution_type(self, job: str) -> int:
        name = EXECUTION_TYPES[job]
        if name not in self._types:
            t = mlmd.ExecutionType(name=name)
            for p in ("model", "run_key"):
                t.properties[p] = mlmd.STRING
            self._types[name] = self.store.put_execution_type(t, can_add_fields=True)
        return self._types[name]

    def _context_type(self) -> None:
        if CONTEXT_TYPE not in self._types:
            self._types[CONTEXT_TYPE] = self.store.put_context_type(mlmd.ContextType(name=CONTEXT_TYPE))


def _found(get: Any, external_ids: list[str]) -> list[Any]:
    """What a `get_*_by_external_ids` finds; MLMD raises NotFoundError where it finds nothing."""
    try:
        return list(get(external_ids))
    except errors.NotFoundError:
        return []


def _set_all(properties: Any, facts: dict[str, Any]) -> None:
    """Facts as custom properties: numbers and strings as they are, anything else as JSON text."""
    for key, value in facts.items():
        if isinstance(value, bool):
            properties[key].bool_value = value
        elif isinstance(value, int):
            properties[key].int_value = value
        elif isinstance(value, float):
            properties[key].double_value = value
        elif isinstance(value, str):
            properties[key].string_value = value
        else:
            properties[key].string_value = json.dumps(value, sort_keys=True)


def _answer(body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


def main() -> int:
    writer: Writer | None = None
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if "connect" in request:
                writer = Writer(connect(request["connect"]))
            elif writer is None:
                raise ValueError("no store: the first line must be {'connect': ...}")
            else:
                for step in request["steps"]:
                    writer.write(step)
        except _RETRYABLE as e:
            _answer({"error": f"{type(e).__name__}: {e}", "retryable": True})
        except (errors.StatusError, ValueError, KeyError, TypeError) as e:
            _answer({"error": f"{type(e).__name__}: {e}", "retryable": False})
        else:
            _answer({"ok": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
