"""The Open Inference Protocol (KServe v2) on the wire, as Triton's and KServe's clients speak it.

Request tensors arrive as JSON or with Triton's binary tensor data extension (`tritonclient` sends
binary by default); they become model input shaped by the revision's MLflow signature: one "row"
tensor of shape [n, columns] or one tensor per named column, as MLServer accepts. Outputs go back as
JSON tensors, or binary where the request asks for it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

if TYPE_CHECKING:  # numpy and pandas load with the first model, not with the module
    import numpy as np
    import numpy.typing as npt
    import pandas as pd

HEADER_LENGTH = "Inference-Header-Content-Length"
UNNAMED_OUTPUT = "predict"

# The protocol's tensor data types and the numpy dtype each travels as (little-endian in binary).
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] = Field(default_factory=list)


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[ResponseOutput]


class BadRequest(ValueError):
    """The request cannot be read or does not fit the model (answered 400 with this message)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    values: npt.NDArray[Any]


@dataclass(frozen=True)
class Signature:
    """What a model revision takes and returns, read from its MLflow signature.

    `columns`: a DataFrame with `names` (the signature's columns, or only the model's own feature
    names when it has no signature); `tensors`: arrays, one per name ("" for one unnamed tensor);
    `any`: whatever the request holds, as it came.
    """

    layout: Literal["columns", "tensors", "any"] = "any"
    names: tuple[str, ...] = ()
    dtypes: tuple[str | None, ...] = ()
    required: tuple[bool, ...] = ()
    inputs: tuple[TensorMetadata, ...] = ()
    outputs: tuple[TensorMetadata, ...] = ()
    output_names: tuple[str, ...] = field(default=())


# --- requests ---------------------------------------------------------------------------------------


def read_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, list[Tensor]]:
    """The request and its input tensors, each an array of its datatype and shape."""
    header, binary = body, b""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be a byte count, not {header_length!r}") from None
        if not 0 <= json_size <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {json_size} does not fit a body of {len(body)} bytes")
        header, binary = body[:json_size], body[json_size:]
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as e:
        raise BadRequest(f"invalid inference request: {_problems(e)}") from None
    tensors: list[Tensor] = []
    offset = 0
    for given in request.inputs:
        size = _binary_size(given)
        raw = None
        if size is not None:
            if offset + size > len(binary):
                raise BadRequest(f"input {given.name!r}: {size} bytes of binary data announced, fewer sent")
            raw, offset = binary[offset : offset + size], offset + size
        tensors.append(Tensor(given.name, _array(given, raw)))
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, tensors


def model_input(tensors: list[Tensor], signature: Signature) -> Any:
    """The tensors as the model takes them: a DataFrame with the signature's columns, or arrays."""
    if any(t.values.size == 0 for t in tensors):
        raise BadRequest("the request holds no values to predict on")
    if signature.layout == "columns":
        return _frame(tensors, signature)
    if signature.layout == "tensors":
        return _named_arrays(tensors, signature)
    if len(tensors) == 1:
        return tensors[0].values
    return _columns_frame({t.name: t.values.reshape(-1) for t in tensors}, list(_unique(tensors)))


# --- responses --------------------------------------------------------------------------------------


def output_tensors(predictions: Any, names: tuple[str, ...]) -> list[Tensor]:
    """The model's predictions as named tensors: a DataFrame's or dict's columns, else one tensor."""
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        return [Tensor(str(c), predictions[c].to_numpy()) for c in predictions.columns]
    if isinstance(predictions, dict):
        return [Tensor(str(k), np.asarray(v)) for k, v in predictions.items()]
    if isinstance(predictions, pd.Series):
        predictions = predictions.to_numpy()
    return [Tensor(names[0] if len(names) == 1 else UNNAMED_OUTPUT, np.asarray(predictions))]


def response(
    request: InferenceRequest, head: dict[str, str], tensors: list[Tensor]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; outputs the request asked for, binary where it asked so.

    `head` holds `model_name`, `model_version` and `id`.
    """
    by_name = {t.name: t for t in tensors}
    wanted = request.outputs or [RequestOutput(name=t.name) for t in tensors]
    unknown = [o.name for o in wanted if o.name not in by_name]
    if unknown:
        raise BadRequest(
            f"the model has no output {', '.join(map(repr, unknown))}; it gives {', '.join(by_name)}"
        )
    binary_default = request.parameters.get("binary_data_output") is True
    outputs: list[ResponseOutput] = []
    chunks: list[bytes] = []
    for asked in wanted:
        tensor = by_name[asked.name]
        datatype = datatype_of(tensor.values.dtype)
        shape = list(tensor.values.shape)
        if asked.parameters.get("binary_data", binary_default) is True:
            raw = _to_binary(tensor.values, datatype)
            chunks.append(raw)
            outputs.append(
                ResponseOutput(
                    name=tensor.name,
                    shape=shape,
                    datatype=datatype,
                    parameters={"binary_data_size": len(raw)},
                )
            )
        else:
            outputs.append(
                ResponseOutput(
                    name=tensor.name, shape=shape, datatype=datatype, data=_to_json(tensor.values, datatype)
                )
            )
    document = InferenceResponse(outputs=outputs, **head).model_dump_json(exclude_none=True).encode()
    if not chunks:
        return document, {"Content-Type": "application/json"}
    return document + b"".join(chunks), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(document)),
    }


def datatype_of(dtype: np.dtype[Any]) -> str:
    return _BY_DTYPE.get(dtype.name, "BYTES")


# --- request tensors --------------------------------------------------------------------------------


def _binary_size(given: RequestInput) -> int | None:
    if any(key.startswith("shared_memory") for key in given.parameters):
        raise BadRequest(f"input {given.name!r}: shared memory is not supported here")
    size = given.parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"input {given.name!r}: binary_data_size must be a byte count, not {size!r}")
    return size


def _array(given: RequestInput, raw: bytes | None) -> npt.NDArray[Any]:
    import numpy as np

    where = f"input {given.name!r}"
    if given.datatype not in DATATYPES:
        raise BadRequest(f"{where}: unknown datatype {given.datatype!r}; one of {', '.join(DATATYPES)}")
    if any(d < 0 for d in given.shape):
        raise BadRequest(f"{where}: shape {given.shape} has a negative dimension")
    count = math.prod(given.shape)
    dtype = np.dtype(DATATYPES[given.datatype])
    if raw is not None:
        flat = _from_binary(raw, dtype, count, where)
    elif given.data is None:
        raise BadRequest(f"{where}: no data (neither `data` nor binary_data_size)")
    else:
        values = _flatten(given.data)
        if len(values) != count:
            raise BadRequest(f"{where}: {len(values)} values do not fit shape {given.shape}")
        flat = _from_json(values, dtype, given.datatype, where)
    try:
        return flat.reshape(given.shape)
    except ValueError as e:  # an empty tensor with a dimension numpy cannot index
        raise BadRequest(f"{where}: shape {given.shape}: {e}") from None


def _from_json(values: list[Any], dtype: np.dtype[Any], datatype: str, where: str) -> npt.NDArray[Any]:
    import numpy as np

    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise BadRequest(f"{where}: BYTES data in JSON must be strings")
        return np.array(values, dtype=object)
    if datatype == "BOOL":
        fits = all(isinstance(v, bool) for v in values)
    elif dtype.kind == "f":
        fits = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    else:
        fits = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if not fits:
        kind = "true/false" if datatype == "BOOL" else "numbers" if dtype.kind == "f" else "whole numbers"
        raise BadRequest(f"{where}: {datatype} data must be {kind}")
    try:
        with np.errstate(all="raise"):
            return np.array(values, dtype=dtype)
    except (OverflowError, ValueError, FloatingPointError) as e:
        raise BadRequest(f"{where}: values do not fit {datatype}: {e}") from None


def _from_binary(raw: bytes, dtype: np.dtype[Any], count: int, where: str) -> npt.NDArray[Any]:
    import numpy as np

    if dtype.kind == "O":
        items: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BadRequest(f"{where}: BYTES element length cut short")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise BadRequest(f"{where}: BYTES element of {length} bytes cut short")
            items.append(raw[offset : offset + length])
            offset += length
        if len(items) != count:
            raise BadRequest(f"{where}: {len(items)} BYTES elements do not fit its shape")
        return np.array([_text(b) for b in items], dtype=object)
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{where}: {len(raw)} bytes do not hold {count} {dtype.name} values")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


def _text(item: bytes) -> str | bytes:
    try:
        return item.decode()
    except UnicodeDecodeError:
        return item


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists in row-major order (iterative: request nesting is the caller's to choose)."""
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


_END = object()


# --- tensors → model input --------------------------------------------------------------------------


def _frame(tensors: list[Tensor], signature: Signature) -> pd.DataFrame:
    import pandas as pd

    names = list(signature.names)
    given = list(_unique(tensors))
    if all(name in names for name in given) and (
        len(tensors) > 1 or tensors[0].values.ndim <= 1 or len(names) == 1
    ):
        missing = [
            n for n, needed in zip(names, _required(signature), strict=True) if needed and n not in given
        ]
        if missing:
            raise BadRequest(
                f"missing input {', '.join(map(repr, missing))}; the model takes {_takes(names)}"
            )
        columns = {t.name: _column(t) for t in tensors}
        return _typed(_columns_frame(columns, [n for n in names if n in columns]), signature)
    if len(tensors) == 1 and tensors[0].values.ndim == 2 and tensors[0].values.shape[1] == len(names):
        return _typed(pd.DataFrame(tensors[0].values, columns=names), signature)
    shapes = ", ".join(f"{t.name!r} {list(t.values.shape)}" for t in tensors)
    raise BadRequest(
        f"the model takes {_takes(names)}: one tensor of shape [n, {len(names)}] or one tensor per "
        f"column; got {shapes}"
    )


def _named_arrays(tensors: list[Tensor], signature: Signature) -> Any:
    if signature.names == ("",):
        if len(tensors) != 1:
            raise BadRequest(f"the model takes one tensor; got {len(tensors)}")
        return _cast(tensors[0].values, signature.dtypes[0], tensors[0].name)
    by_name = {t.name: t for t in tensors}
    missing = [
        n
        for n, needed in zip(signature.names, _required(signature), strict=True)
        if needed and n not in by_name
    ]
    unknown = [n for n in by_name if n not in signature.names]
    if missing or unknown:
        raise BadRequest(
            f"the model takes the tensors {_takes(list(signature.names))}; got {_takes(list(by_name))}"
        )
    return {
        name: _cast(by_name[name].values, dtype, name)
        for name, dtype in zip(signature.names, signature.dtypes, strict=True)
        if name in by_name
    }


def _column(tensor: Tensor) -> npt.NDArray[Any]:
    values = tensor.values
    if values.ndim == 2 and values.shape[1] == 1:
        return values.reshape(-1)
    if values.ndim > 1:
        raise BadRequest(f"input {tensor.name!r}: a column is shape [n] or [n, 1], not {list(values.shape)}")
    return values.reshape(-1)


def _columns_frame(columns: dict[str, npt.NDArray[Any]], order: list[str]) -> pd.DataFrame:
    import pandas as pd

    if len({len(columns[n]) for n in order}) > 1:
        lengths = ", ".join(f"{n!r} {len(columns[n])}" for n in order)
        raise BadRequest(f"inputs given as columns must all have the same length; got {lengths}")
    return pd.DataFrame({n: columns[n] for n in order})


def _typed(frame: pd.DataFrame, signature: Signature) -> pd.DataFrame:
    for name, dtype in zip(signature.names, signature.dtypes, strict=True):
        if name in frame.columns and dtype is not None:
            frame[name] = _cast(frame[name].to_numpy(), dtype, name)
    return frame


def _cast(values: npt.NDArray[Any], dtype: str | None, name: str) -> npt.NDArray[Any]:
    """Values as the signature's dtype: FP32, FP64 and integers are all taken for a float column."""
    import numpy as np

    if dtype is None or values.dtype.name == dtype:
        return values
    target = np.dtype(dtype)
    try:
        with np.errstate(all="raise"):  # overflow and NaN into integers are the caller's to fix
            if target.kind in "iu" and values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
                raise BadRequest(f"input {name!r}: the model takes whole numbers ({dtype}), got fractions")
            return values.astype(target)
    except (TypeError, ValueError, OverflowError, FloatingPointError) as e:
        if isinstance(e, BadRequest):
            raise
        raise BadRequest(f"input {name!r}: values do not convert to {dtype}: {e}") from None


def _required(signature: Signature) -> tuple[bool, ...]:
    return signature.required or (True,) * len(signature.names)


def _unique(tensors: list[Tensor]) -> dict[str, None]:
    names = dict.fromkeys(t.name for t in tensors)
    if len(names) != len(tensors):
        raise BadRequest("two inputs share a name")
    return names


def _takes(names: list[str]) -> str:
    return ", ".join(map(repr, names))


# --- response tensors -------------------------------------------------------------------------------


def _to_json(values: npt.NDArray[Any], datatype: str) -> list[Any]:
    flat = values.reshape(-1)
    if datatype == "BYTES":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    if datatype.startswith("FP"):
        return [None if not math.isfinite(v) else v for v in flat.tolist()]
    return list(flat.tolist())


def _to_binary(values: npt.NDArray[Any], datatype: str) -> bytes:
    import numpy as np

    if datatype != "BYTES":
        return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
    parts: list[bytes] = []
    for v in values.reshape(-1):
        item = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(item)) + item)
    return b"".join(parts)


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', '')}" for e in error.errors()
    )


def openapi_request_body() -> dict[str, Any]:
    """The infer request body for the OpenAPI document (the route reads the raw body itself)."""
    schema = InferenceRequest.model_json_schema(ref_template="{model}")
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"required": True, "content": {"application/json": {"schema": inline(schema)}}}
