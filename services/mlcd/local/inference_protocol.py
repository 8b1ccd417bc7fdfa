"""The Open Inference Protocol (v2) payloads: request tensors in, model outputs back as tensors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

_DATATYPES = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64"}


class RequestTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[RequestTensor] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ResponseTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[ResponseTensor]


class BadTensor(ValueError):
    """The request's tensors cannot be turned into model input (answered 400)."""


def model_input(request: InferenceRequest) -> Any:
    """One tensor: an array of its shape; several: a DataFrame with a column per tensor name."""
    import numpy as np
    import pandas as pd

    def array(tensor: RequestTensor) -> Any:
        flat = np.asarray(_flatten(tensor.data))
        try:
            return flat.reshape(tensor.shape)
        except ValueError as e:
            raise BadTensor(
                f"input {tensor.name!r}: {len(flat)} values do not fit shape {tensor.shape}"
            ) from e

    if len(request.inputs) == 1:
        return array(request.inputs[0])
    columns = {t.name: array(t).reshape(-1) for t in request.inputs}
    if len({len(c) for c in columns.values()}) != 1:
        raise BadTensor("inputs given as columns must all have the same length")
    return pd.DataFrame(columns)


def outputs(predictions: Any) -> list[ResponseTensor]:
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return [_tensor(str(name), predictions[name].to_numpy()) for name in predictions.columns]
    if isinstance(predictions, pd.Series):
        predictions = predictions.to_numpy()
    return [_tensor("predict", np.asarray(predictions))]


def _tensor(name: str, values: Any) -> ResponseTensor:
    datatype = _DATATYPES.get(values.dtype.kind, "BYTES")
    data = values.reshape(-1).tolist() if datatype != "BYTES" else [str(v) for v in values.reshape(-1)]
    return ResponseTensor(name=name, shape=list(values.shape), datatype=datatype, data=data)


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat
