"""The KServe V1 inference protocol: request validation and response encoding.

Request (``POST /v1/models/<name>:predict``)::

    {"instances": [{"mean_radius": 14.1, ..., "worst_fractal_dimension": 0.08},
                   [14.1, 20.3, ...]]}

Each instance is either an object keyed by every feature name, or a list of the
feature values in schema order. Response::

    {"model_name": "wdbc", "model_version": "v3",
     "predictions": [{"label": 1, "class": "malignant", "probability": 0.97}, ...]}

``probability`` is the probability of the positive class (malignant) and
``label`` is 1 when it is at least the threshold (0.5).

Every body the server cannot answer gets a 4xx with ``{"error": "<reason>"}``, never a
500: see :func:`check_content_type` (415), :func:`check_body_size` (413),
:func:`parse_instances` (400/413/422) and :func:`check_outputs` (422).

Everything here is plain Python and NumPy with no Serve or FastAPI import, so it
is unit-tested directly and shared by the Serve replica and the bare uvicorn
baseline of the benchmark. Parsing is the hot path: the body is decoded once with
the C JSON decoder, each row is checked with a type test per value, and the rows
go into NumPy in one call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from workloads.exceptions import InvalidRequestError

#: Class names by label.
CLASSES = ("benign", "malignant")
THRESHOLD = 0.5
#: Bytes one instance may take in a body (30 numbers written out in full, with names, fit easily).
BYTES_PER_INSTANCE = 4096

_NUMBER_TYPES = (int, float)


def _reject_constant(name: str) -> Any:
    raise InvalidRequestError(f"instances contain {name}: every feature value must be a finite number", 422)


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def max_body_bytes(max_instances: int) -> int:
    """Largest request body accepted for a batch limit (checked before parsing)."""
    return max_instances * BYTES_PER_INSTANCE + 1024


def check_body_size(n_bytes: int, max_instances: int) -> None:
    """Refuse a body of ``n_bytes`` (or one already known to be at least that long) with 413."""
    limit = max_body_bytes(max_instances)
    if n_bytes > limit:
        raise InvalidRequestError(
            f"request body is {n_bytes} bytes or more: must be at most {limit} (at most {max_instances} instances)", 413,
        )


#: Content types whose body is read as JSON. ``application/x-www-form-urlencoded`` is what
#: ``curl -d`` and Python's urllib send when no type is given; the body must still be JSON.
_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")


def check_content_type(value: str | None) -> None:
    """Refuse a declared media type or charset the body cannot be (415); no header is fine.

    Accepted: ``application/json``, any ``application/*+json``, and
    ``application/x-www-form-urlencoded`` (the default of ``curl -d``), with no
    charset or ``utf-8``.
    """
    if value is None or not value.strip():
        return
    mime, _, params = value.partition(";")
    mime = mime.strip().lower()
    if mime not in _JSON_TYPES and not (mime.startswith("application/") and mime.endswith("+json")):
        raise InvalidRequestError(f"Content-Type {_describe(value)}: must be application/json", 415)
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvalidRequestError(f"Content-Type {_describe(value)}: the charset must be utf-8", 415)


def _describe(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, bool)) or value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(text: str) -> str:
    """A client-supplied name as it appears in an error: at most 40 characters."""
    return text if len(text) <= 40 else text[:37] + "..."


def _check_values(values: Sequence[Any], where: str, names: Sequence[str] | None) -> None:
    """Raise naming the first non-numeric or non-finite value (only called on the slow path)."""
    for j, v in enumerate(values):
        label = f"{where}.{names[j]}" if names is not None else f"{where}[{j}]"
        if type(v) is bool or not isinstance(v, _NUMBER_TYPES):
            raise InvalidRequestError(f"{label}: got {_describe(v)}: must be a number", 422)
        if not math.isfinite(v):
            raise InvalidRequestError(f"{label}: got {v!r}: must be a finite number", 422)


def parse_instances(body: bytes, feature_names: Sequence[str], max_instances: int) -> np.ndarray:
    """Validate a KServe V1 predict body and return a ``(n, n_features)`` float64 array.

    Args:
        body: The raw request body.
        feature_names: The model's features in schema order.
        max_instances: Largest number of instances accepted in one request.

    Raises:
        InvalidRequestError: With HTTP status 400 (not UTF-8, not JSON, nested too deeply, not
            an object), 413 (too many instances or too large a body) or 422 (wrong features,
            count, or values, including numbers too long to read or too large for a float64),
            and a message naming the instance and feature at fault.
    """
    if len(body) > max_body_bytes(max_instances):
        raise InvalidRequestError(
            f"request body is {len(body)} bytes: must be at most {max_body_bytes(max_instances)} "
            f"(at most {max_instances} instances)", 413,
        )
    if not body:
        raise InvalidRequestError('request body is empty: must be a JSON object {"instances": [...]}', 400)
    try:
        payload = _decoder.decode(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidRequestError(f"request body is not UTF-8 text ({e.reason})", 400) from e
    except json.JSONDecodeError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", 400) from e
    except RecursionError:
        # The C decoder recurses per nesting level; a valid body nests 3 levels deep.
        raise InvalidRequestError(
            'request body is nested too deeply: must be {"instances": [[numbers...] or {name: number}, ...]}', 400,
        ) from None
    except ValueError as e:
        # e.g. an integer literal longer than Python's int conversion limit (4300 digits).
        raise InvalidRequestError(f"request body has a value that cannot be read: {e}", 422) from e
    if not isinstance(payload, dict):
        raise InvalidRequestError(
            f'request body is a JSON {type(payload).__name__}: must be an object {{"instances": [...]}}', 400
        )
    if "instances" not in payload:
        extra = f" (got keys {[_short(k) for k in sorted(payload)[:5]]})" if payload else ""
        hint = ' ("inputs" is the V2 protocol; this server speaks V1)' if "inputs" in payload else ""
        raise InvalidRequestError(f'request body has no "instances"{extra}{hint}', 422)
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidRequestError(f'"instances" is a {type(instances).__name__}: must be a list', 422)
    n = len(instances)
    if n == 0:
        raise InvalidRequestError('"instances" is empty: send at least one instance', 422)
    if n > max_instances:
        raise InvalidRequestError(f'"instances" has {n} items: must be at most {max_instances} per request', 413)

    n_features = len(feature_names)
    rows: list[Sequence[Any]] = []
    for i, inst in enumerate(instances):
        if type(inst) is list:
            if len(inst) != n_features:
                raise InvalidRequestError(
                    f"instances[{i}] has {len(inst)} values: must have {n_features} "
                    f"(the features in schema order: {feature_names[0]}, ..., {feature_names[-1]})", 422,
                )
            row: Sequence[Any] = inst
            names = None
        elif type(inst) is dict:
            if len(inst) != n_features or any(k not in inst for k in feature_names):
                missing = [k for k in feature_names if k not in inst]
                unknown = [_short(k) for k in sorted(k for k in inst if k not in set(feature_names))]
                parts = []
                if missing:
                    parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
                if unknown:
                    parts.append(f"unknown {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
                raise InvalidRequestError(
                    f"instances[{i}] has wrong feature names: {'; '.join(parts)} "
                    f"(expected the {n_features} names given by GET /v1/models/<name>)", 422,
                )
            row = [inst[k] for k in feature_names]
            names = feature_names
        else:
            raise InvalidRequestError(
                f"instances[{i}] is a {type(inst).__name__}: must be an object keyed by feature name "
                "or a list of values in schema order", 422,
            )
        # Fast check; the slow one only runs to word the error.
        for v in row:
            if type(v) is not float and type(v) is not int:
                _check_values(row, f"instances[{i}]", names)
        rows.append(row)
    try:
        x = np.array(rows, dtype=np.float64)
    except OverflowError as e:
        raise InvalidRequestError(f"instances contain an integer too large for a float64 ({e})", 422) from e
    if not np.isfinite(x).all():
        # Literals like 1e999 decode to inf without any error from the JSON decoder.
        i, j = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise InvalidRequestError(f"instances[{i}].{feature_names[j]}: got {float(x[i, j])!r}: must be a finite number", 422)
    return x


def check_outputs(probabilities: np.ndarray) -> None:
    """Refuse to answer a probability that is not a finite number (422 naming the instance).

    Every input is finite, yet values far outside what the model was fitted on can
    overflow during standardization; answering ``NaN`` as "benign" would be wrong.
    """
    bad = ~np.isfinite(probabilities)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidRequestError(
            f"instances[{i}]: the model gives no finite probability for these values "
            "(far outside the range it was trained on)", 422,
        )


def encode_predictions(probabilities: np.ndarray, *, model_name: str, model_version: str) -> bytes:
    """The JSON body answering a predict request."""
    preds = []
    for p in probabilities.tolist():
        label = 1 if p >= THRESHOLD else 0
        preds.append({"label": label, "class": CLASSES[label], "probability": round(p, 6)})
    return json.dumps(
        {"model_name": model_name, "model_version": model_version, "predictions": preds},
        separators=(",", ":"),
    ).encode()


def error_body(message: str) -> bytes:
    """The JSON body of a 4xx answer."""
    return json.dumps({"error": message}).encode()


#: OpenAPI schema of every 4xx body.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
}

#: OpenAPI schema of the predict body, shown on ``/docs``.
PREDICT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["instances"],
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "items": {
                "oneOf": [
                    {"type": "object", "additionalProperties": {"type": "number"},
                     "description": "Every feature by name (see GET /v1/models/{name})."},
                    {"type": "array", "items": {"type": "number"},
                     "description": "Feature values in schema order."},
                ]
            },
        }
    },
}
