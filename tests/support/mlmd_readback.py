"""Reads an ML Metadata store back with MLMD's own API and prints it as JSON (run it with the
.venv-mlmd interpreter: `python mlmd_readback.py SQLITE_FILE`). Imports nothing of mlcd or the tests.

Prints types, artifacts, executions (with state and properties), events (execution name, artifact
name, INPUT/OUTPUT) and contexts with the executions associated and artifacts attributed to each.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _props(node: Any) -> dict[str, Any]:
    found = {k: _value(v) for k, v in node.properties.items()}
    found.update({k: _value(v) for k, v in node.custom_properties.items()})
    return found


def main(path: str) -> None:
    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    artifacts = {a.id: a for a in store.get_artifacts()}
    executions = {e.id: e for e in store.get_executions()}
    state = mlmd.Execution.State.Name
    result = {
        "artifact_types": sorted(t.name for t in store.get_artifact_types()),
        "execution_types": sorted(t.name for t in store.get_execution_types()),
        "context_types": sorted(t.name for t in store.get_context_types()),
        "artifacts": [
            {"type": a.type, "name": a.name, "uri": a.uri, "properties": _props(a)}
            for a in artifacts.values()
        ],
        "executions": [
            {"type": e.type, "name": e.name, "state": state(e.last_known_state), "properties": _props(e)}
            for e in executions.values()
        ],
        "events": [
            {
                "execution": executions[ev.execution_id].name,
                "artifact": artifacts[ev.artifact_id].name,
                "type": mlmd.Event.Type.Name(ev.type),
            }
            for ev in store.get_events_by_execution_ids(list(executions))
        ],
        "contexts": [
            {
                "type": c.type,
                "name": c.name,
                "executions": sorted(e.name for e in store.get_executions_by_context(c.id)),
                "artifacts": sorted(a.name for a in store.get_artifacts_by_context(c.id)),
            }
            for c in store.get_contexts()
        ],
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
