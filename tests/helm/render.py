#!/usr/bin/env python3
"""Lints and renders a Helm chart with Helm's own library (PyPI
helm-python-sdk, Helm v4 through its C ABI; no helm binary).

usage: render.py CHART RELEASE NAMESPACE [VALUES_FILE ...]

Prints one JSON object: {"<values file or ''>": {"lint": {...}, "schema_error":
str|null, "render_error": str|null, "manifests": {template: text}}}. The
empty name is the chart's default values. Every values file is used on its
own, as `helm install -f FILE` would.
"""
import json
import sys

import helm_python as helm


def one(chart_dir, release, namespace, values_file):
    values = {}
    if values_file:
        with open(values_file) as f:
            values = helm.values_from_yaml(f.read())
    out = {"lint": None, "schema_error": None, "render_error": None, "manifests": {}}
    out["lint"] = helm.lint(chart_dir, values, strict=True, namespace=namespace)
    chart = helm.Chart.load(chart_dir)
    try:
        chart.validate_schema(chart.merge_values(values))
    except helm.HelmError as e:
        out["schema_error"] = str(e)
    try:
        out["manifests"] = chart.render(values, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as e:
        out["render_error"] = str(e)
    return out


def main():
    chart_dir, release, namespace, *files = sys.argv[1:]
    result = {f: one(chart_dir, release, namespace, f) for f in [""] + files}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
