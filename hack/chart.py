"""Lints and renders the chart with Helm's own engine (helm-python-sdk).

Reads {"values": {...}, "namespace": "...", "release": "..."} as JSON on
stdin; prints {"lint": <report>, "manifests": {path: text}} or
{"error": "..."} as JSON. Used by tests/chart.rs.
"""
import json
import pathlib
import sys

import helm_python as helm

request = json.load(sys.stdin)
chart_dir = pathlib.Path(__file__).resolve().parent.parent / "chart"
values = request.get("values") or {}
try:
    lint = helm.lint(str(chart_dir), values, strict=True)
    chart = helm.Chart.load(str(chart_dir))
    chart.validate_schema(chart.merge_values(values))
    manifests = chart.render(
        values,
        name=request.get("release", "dbqo"),
        namespace=request.get("namespace", "dbqo-system"),
        is_install=True,
    )
    print(json.dumps({"lint": lint, "manifests": manifests, "chart": chart.metadata}))
except helm.HelmError as e:
    print(json.dumps({"error": str(e)}))
