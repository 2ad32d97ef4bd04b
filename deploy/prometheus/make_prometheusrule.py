"""Write prometheusrule.yaml (a PrometheusRule for the Prometheus operator) from
scanward-rules.yaml (the plain rules file), so the two never differ.

    python deploy/prometheus/make_prometheusrule.py          # rewrite prometheusrule.yaml
    python deploy/prometheus/make_prometheusrule.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "scanward-rules.yaml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = ("# Generated from scanward-rules.yaml by make_prometheusrule.py: edit that file and\n"
          "# run `python deploy/prometheus/make_prometheusrule.py`. Add the label your\n"
          "# Prometheus's ruleSelector matches (kube-prometheus-stack: release: <its release>).\n")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks, as in the source."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "scanward", "namespace": "scanward",
                     "labels": {"app.kubernetes.io/name": "scanward",
                                "app.kubernetes.io/component": "alerts"}},
        "spec": {"groups": rules["groups"]},
    }


def render() -> str:
    rules = yaml.safe_load(SOURCE.read_text())
    body = yaml.dump(prometheus_rule(rules), Dumper=_Dumper, sort_keys=False, width=100,
                     allow_unicode=True)
    return HEADER + body


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
