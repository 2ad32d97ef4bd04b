"""The scanner catalog: what each scanner is, how it runs and where it writes SARIF.

Commands are argv templates; ``{source}`` is the read-only checkout and ``{sarif}`` the
file the scanner must write. Local commands may also use ``{python}`` (this
interpreter), ``{bindir}`` (its scripts directory) and ``{rules}`` (bundled rules).
The same entry serves both job backends: Kubernetes runs ``command`` in ``image``; the
local backend runs ``local_command`` (if the tool installs from PyPI) as a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scanward import synthetic_scanner
from scanward.contract import Resources
from scanward.inputs import InputError, check_scanner_name

log = logging.getLogger("scanward.catalog")


class ScannerSpec(BaseModel):
    """One scanner in the catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    image: str
    command: tuple[str, ...] = Field(min_length=1)
    local_command: tuple[str, ...] | None = None
    local_env: dict[str, str] = Field(default_factory=dict)
    local_cwd: str = "{source}"  # a template like the command's arguments
    # Extra pod template metadata on Kubernetes (e.g. a mesh's sidecar opt-out).
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    # Exit codes that mean "ran fine and found something" rather than failure.
    findings_exit_codes: frozenset[int] = frozenset()
    # Exit codes that mean the scanner rejected its input: retrying cannot fix them.
    bad_input_exit_codes: frozenset[int] = frozenset()
    base: Resources = Resources(cpu_millis=250, memory_mib=256)
    memory_mib_per_gib: int = Field(default=512, ge=0)  # extra memory per GiB of checkout
    max_memory_mib: int = Field(default=8192, ge=16)


class UnknownScanner(InputError):
    """A scanner name that is not in the catalog."""


_BUILTIN: tuple[ScannerSpec, ...] = (
    ScannerSpec(
        name="bandit",
        image="ghcr.io/pycqa/bandit/bandit:1.9.4",
        command=("bandit", "-q", "-r", "{source}", "-f", "sarif", "-o", "{sarif}"),
        local_command=("{python}", "-m", "bandit", "-q", "-r", "{source}", "-f", "sarif",
                       "-o", "{sarif}"),
        findings_exit_codes=frozenset({1}),
        bad_input_exit_codes=frozenset({2}),
        base=Resources(cpu_millis=250, memory_mib=256),
        memory_mib_per_gib=512,
    ),
    ScannerSpec(
        name="semgrep",
        image="semgrep/semgrep:1.185.0",
        command=("semgrep", "scan", "--config", "p/default", "--metrics", "off", "--sarif",
                 "--output", "{sarif}", "{source}"),
        # Run from the rules directory: semgrep prefixes rule ids with the config's path.
        local_cwd="{rules}",
        local_command=("{bindir}/semgrep", "scan", "--config", "semgrep-python.yml",
                       "--metrics", "off", "--disable-version-check", "--quiet", "--sarif",
                       "--output", "{sarif}", "{source}"),
        local_env={"SEMGREP_ENABLE_VERSION_CHECK": "0", "SEMGREP_SEND_METRICS": "off"},
        findings_exit_codes=frozenset({1}),
        bad_input_exit_codes=frozenset({2, 4, 5, 7}),
        base=Resources(cpu_millis=500, memory_mib=1024),
        memory_mib_per_gib=1024,
    ),
    ScannerSpec(
        name="gitleaks",
        image="zricethezav/gitleaks:v8.28.0",
        command=("gitleaks", "dir", "{source}", "--report-format", "sarif", "--report-path",
                 "{sarif}", "--exit-code", "0", "--no-banner", "--redact"),
        bad_input_exit_codes=frozenset({126}),
        base=Resources(cpu_millis=250, memory_mib=256),
        memory_mib_per_gib=256,
    ),
    ScannerSpec(
        name="trivy",
        image="aquasec/trivy:0.67.2",
        command=("trivy", "fs", "--format", "sarif", "--output", "{sarif}", "--exit-code", "0",
                 "--skip-db-update", "--offline-scan", "{source}"),
        base=Resources(cpu_millis=500, memory_mib=512),
        memory_mib_per_gib=512,
    ),
    # Load tests (scanward load): duration and outcome chosen by the scanned repository
    # (.scanward-synthetic.json), valid SARIF with N findings; see synthetic_scanner.py.
    ScannerSpec(
        name="synthetic",
        image="ghcr.io/scanward/scanward:0.1.0",
        command=("python", "-m", "scanward.synthetic_scanner", "{source}", "{sarif}"),
        # -I: the checkout (the cwd) must not shadow the scanner's own modules.
        local_command=("{python}", "-I", "-m", "scanward.synthetic_scanner", "{source}",
                       "{sarif}"),
        bad_input_exit_codes=frozenset({2}),
        base=Resources(cpu_millis=50, memory_mib=64),
        memory_mib_per_gib=0,
        max_memory_mib=synthetic_scanner.MAX_MEMORY_MIB,
    ),
)


def _read(path: Path) -> dict[str, ScannerSpec]:
    specs = {s.name: s for s in _BUILTIN}
    try:
        raw = json.loads(path.read_text())
        extra = [ScannerSpec.model_validate(item) for item in raw["scanners"]]
    except FileNotFoundError as e:
        raise InputError(f"scanner catalog {path}: file not found") from e
    except (ValueError, KeyError, TypeError, ValidationError) as e:
        detail = str(e).splitlines()[0]
        raise InputError(f"scanner catalog {path}: invalid ({detail})") from e
    for spec in extra:
        check_scanner_name(spec.name)
        specs[spec.name] = spec
    return specs


class Catalog:
    """Scanner specs by name: the built-ins plus those of an optional JSON file
    (``SCANWARD_CATALOG``), which may add scanners or replace built-ins.

    The file is read again when it changes, so an operator can fix an entry (a bad
    image tag, say) and ``retry`` the dead scanner without restarting workers; a broken
    edit is logged and the previous catalog kept."""

    def __init__(self, specs: Mapping[str, ScannerSpec], path: Path | None = None) -> None:
        self._specs = dict(specs)
        self._path = path
        self._stamp = self._stat()

    @classmethod
    def load(cls, extra_file: str | os.PathLike[str] | None = None) -> Catalog:
        if not extra_file:
            return cls({s.name: s for s in _BUILTIN})
        path = Path(extra_file)
        return cls(_read(path), path)

    def _stat(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        stamp = self._stat()
        if self._path is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._specs = _read(self._path)
            log.info("scanner catalog %s reloaded", self._path)
        except InputError as e:
            log.warning("%s; keeping the previous catalog", e)

    def names(self) -> list[str]:
        self._refresh()
        return sorted(self._specs)

    def get(self, name: str) -> ScannerSpec:
        self._refresh()
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownScanner(
                f"unknown scanner {name!r} (known: {', '.join(self.names())})"
            ) from None

    def check(self, names: tuple[str, ...] | list[str]) -> None:
        """Raise :class:`UnknownScanner` naming the first name not in the catalog."""
        for name in names:
            self.get(name)
