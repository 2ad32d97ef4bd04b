"""The tests' own helpers, where they meet the kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.pids import process_alive


def test_process_alive_survives_a_process_that_exits_while_it_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(["sleep", "30"])
    assert process_alive(child.pid)
    with open(f"/proc/{child.pid}/stat") as stat:
        child.kill()
        child.wait()
        # The race a CI run hit: /proc/<pid>/stat opened, the process reaped, then read.
        with pytest.raises(ProcessLookupError):
            stat.read()

    def exits_mid_read(self: Path, *args: object, **kwargs: object) -> str:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(Path, "read_text", exits_mid_read)
    assert process_alive(child.pid) is False
