"""Lints, renders, installs, upgrades and uninstalls the chart with Helm's own
engine (helm-python-sdk: Helm v4's Go SDK, no helm binary).

Reads a JSON request on stdin and prints a JSON answer:
  {"values": {...}, "namespace": "...", "release": "..."}
      -> {"lint": <report>, "manifests": {path: text}, "chart": <metadata>}
  {"action": "install" | "upgrade" | "uninstall", "kubeconfig": "...",
   "values": {...}, "namespace": "...", "release": "..."}
      -> {"release": <Helm's release summary>}
Failures print {"error": "..."}. Used by tests/chart.rs and tests/in_cluster.rs.
"""
import json
import pathlib
import sys

import helm_python as helm

request = json.load(sys.stdin)
chart_dir = pathlib.Path(__file__).resolve().parent.parent / "chart"
values = request.get("values") or {}
release = request.get("release", "dbqo")
namespace = request.get("namespace", "dbqo-system")
action = request.get("action", "render")


def render():
    lint = helm.lint(str(chart_dir), values, strict=True)
    chart = helm.Chart.load(str(chart_dir))
    chart.validate_schema(chart.merge_values(values))
    manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    return {"lint": lint, "manifests": manifests, "chart": chart.metadata}


def act():
    with helm.Config(kubeconfig_path=request["kubeconfig"], namespace=namespace) as config:
        if action == "install":
            result = config.install(str(chart_dir), release, values, namespace=namespace,
                                    create_namespace=True, timeout=120)
        elif action == "upgrade":
            result = config.upgrade(str(chart_dir), release, values, namespace=namespace,
                                    timeout=120)
        elif action == "uninstall":
            result = config.uninstall(release, timeout=120)
        else:
            raise ValueError(f"unknown action {action!r}")
    return {"release": result}


try:
    print(json.dumps(render() if action == "render" else act(), default=str))
except (helm.HelmError, ValueError) as e:
    print(json.dumps({"error": str(e)}))
