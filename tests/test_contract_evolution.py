"""During a rolling deploy old and new workers read each other's messages: a field added
to an activity input or result (with a default) must not break code that predates it,
while what people send (the start request, operator signals) stays strict."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from scanward import contract
from workflows.scan import ScanWorkflow

CORPUS = Path(__file__).parent / "histories" / "v1"

TOLERANT = [m for m in vars(contract).values()
            if isinstance(m, type) and issubclass(m, contract.Message)
            and m is not contract.Message]
STRICT = [contract.ScanRequest, contract.RetrySignal, contract.AbandonSignal,
          contract.NotifyTarget, contract.RetryTuning, contract.Resources]


def test_worker_messages_ignore_fields_they_do_not_know() -> None:
    names = {m.__name__ for m in TOLERANT}
    assert {"ScannerJobInput", "ScannerJobResult", "PersistResult", "ScanSummary",
            "CloneResult", "NotifyInput"} <= names, names
    result = contract.ScannerJobResult.model_validate(
        {"scanner": "bandit", "attempt": 1, "sarif_subpath": "s/bandit/attempt-1/r.sarif",
         "exit_code": 0, "duration_seconds": 1.0, "added_in_a_later_version": {"x": 1}})
    assert result.scanner == "bandit"


@pytest.mark.parametrize("model", STRICT, ids=lambda m: m.__name__)
def test_what_people_send_stays_strict(model: type[BaseModel]) -> None:
    assert not issubclass(model, contract.Message)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate({"colour": "red"})


def _with_extra_field(payload: dict[str, Any]) -> None:
    doc = json.loads(base64.b64decode(payload["data"]))
    doc["added_in_a_later_version"] = {"nested": [1, 2, 3]}
    payload["data"] = base64.b64encode(json.dumps(doc).encode()).decode()


async def test_todays_workflow_replays_a_newer_workers_activity_results() -> None:
    """Every activity result in a recorded history gains a field today's code does not
    know, as a result from a newer worker would: the history still replays."""
    raw = json.loads((CORPUS / "completed_multi.json").read_text())
    changed = 0
    for event in raw["events"]:
        done = event.get("activityTaskCompletedEventAttributes")
        payloads = (done or {}).get("result", {}).get("payloads", [])
        for payload in payloads:
            if payload.get("data") and json.loads(base64.b64decode(payload["data"])):
                _with_extra_field(payload)
                changed += 1
    assert changed >= 3  # clone, scanners, persist
    history = WorkflowHistory.from_json("newer-worker", json.dumps(raw))
    replayer = Replayer(workflows=[ScanWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
