"""activities/reaper.py's ``--steps`` mode (a clone's git commands under one reaper):
commands run in order, the first failure stops the rest and is reported with its index
and status, and the commands' output is on stderr, so the reaper's stdout says only
which step ended it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from activities import child_process


async def _steps(tmp_path: Path, *steps: list[str]) -> tuple[int, int | None, str, str]:
    proc = await child_process.spawn_steps(steps, env={"PATH": "/usr/bin:/bin"},
                                           cwd=tmp_path)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, child_process.last_step(out), out.decode(), err.decode()


async def test_steps_run_in_order_until_the_first_failure(tmp_path: Path) -> None:
    code, step, out, err = await _steps(
        tmp_path,
        ["sh", "-c", "echo one > first; echo said-one"],
        ["sh", "-c", "test -f first && echo broke >&2; exit 3"],
        ["touch", "never"])
    assert (code, step) == (3, 1)
    assert out == "step=1 code=3\n"  # the commands' stdout went to stderr
    assert "said-one" in err and "broke" in err
    assert (tmp_path / "first").exists() and not (tmp_path / "never").exists()


async def test_all_steps_succeed(tmp_path: Path) -> None:
    code, step, _, _ = await _steps(tmp_path, ["true"], ["touch", "a"], ["touch", "b"])
    assert (code, step) == (0, 2)
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()


async def test_a_missing_program_is_named(tmp_path: Path) -> None:
    code, step, _, err = await _steps(tmp_path, ["true"], ["/nonexistent/git", "init"])
    assert (code, step) == (127, 1)
    assert "cannot run /nonexistent/git" in err


async def test_stop_kills_the_running_step_and_skips_the_rest(tmp_path: Path) -> None:
    proc = await child_process.spawn_steps(
        [["sh", "-c", "echo started > started; exec sleep 60"], ["touch", "never"]],
        env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    for _ in range(200):
        if (tmp_path / "started").exists():
            break
        await asyncio.sleep(0.02)
    await child_process.stop(proc)
    assert proc.returncode == 128 + 9  # the running step was SIGKILLed with its group
    assert not (tmp_path / "never").exists()


def test_malformed_steps_are_refused() -> None:
    done = subprocess.run([sys.executable, "-I", "-S", str(child_process.REAPER), "1",
                           "--steps", "3", "true"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2
    assert "usage: reaper.py" in done.stderr
