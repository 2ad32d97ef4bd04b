"""Decoding what a workflow receives, inside the workflow: input can come from Temporal's
CLI, the Web UI or another SDK, not only from our client, so a payload that does not
decode or validate must become a clear, non-retryable failure, not a failed task."""

from __future__ import annotations

from typing import TypeVar

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from scanward.contract import explain

T = TypeVar("T")

# What a handler receives when the sender gave no input: the payload converter decodes
# it as None, like an explicit JSON ``null``.
NO_INPUT = RawValue(Payload(metadata={"encoding": b"binary/null"}))


def decode(raw: RawValue, model: type[T], what: str) -> T:
    """Decode and validate handler input; a payload of ``null`` (or none) is ``model()``.
    Raises a non-retryable ``ApplicationError`` naming every problem."""
    try:
        value = workflow.payload_converter().from_payload(raw.payload, model | None)  # type: ignore[arg-type]
        if value is None:
            return model()
        if isinstance(model, type) and not isinstance(value, model):
            # binary/plain (and any converter that ignores the type) hands back raw bytes.
            encoding = raw.payload.metadata.get("encoding", b"").decode(errors="replace")
            raise TypeError(f"encoding {encoding or 'none'} gave {type(value).__name__}, "
                            "not a JSON object (send it as json/plain)")
        return value
    except ValidationError as e:
        problem = explain(e)
    except Exception as e:  # not JSON, an unknown encoding
        problem = f"{type(e).__name__}: {e}"
    raise ApplicationError(f"invalid {what}: {problem}", type="InvalidInput",
                           non_retryable=True)
