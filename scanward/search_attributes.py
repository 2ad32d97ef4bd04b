"""Custom search attributes: how operators find scans in the Web UI and CLI, e.g.
``ScanStatus = "dead"``. The dev server registers them with ``--search-attribute``."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey

SCAN_STATUS = SearchAttributeKey.for_keyword("ScanStatus")
SCAN_TENANT = SearchAttributeKey.for_keyword("ScanTenant")
SCAN_DEAD_SCANNERS = SearchAttributeKey.for_keyword_list("ScanDeadScanners")

ALL = (SCAN_STATUS, SCAN_TENANT, SCAN_DEAD_SCANNERS)


_TYPE_NAMES = {SearchAttributeIndexedValueType.KEYWORD: "Keyword",
               SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList"}


def type_name(key: SearchAttributeKey[Any]) -> str:
    """The type as the ``temporal`` CLI names it: ``Keyword``, ``KeywordList``."""
    return _TYPE_NAMES[key.indexed_value_type]


def dev_server_args() -> list[str]:
    """``--search-attribute Name=Type`` arguments for ``temporal server start-dev``."""
    args: list[str] = []
    for key in ALL:
        args += ["--search-attribute", f"{key.name}={type_name(key)}"]
    return args
