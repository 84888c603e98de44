#!/usr/bin/env python3
"""Checks the Grafana dashboard and the Prometheus rule files against the metrics.

Usage: check_references.py KNOWN_NAMES DASHBOARD_JSON RULE_FILE... [--queries OUT [--exposed NAMES]]

KNOWN_NAMES holds one metric name a line: the families a running service exposes (its
`# TYPE` lines) and the ones docs/observability.md lists as still to come. Fails when the
dashboard is not an importable dashboard of the expected shape (stable uid, the seed's
variables, usage panels not capped at 100 with thresholds 75/90), when a panel has no
query, or when a query, or anything in a rule file (comments and annotations included),
names a `luneo_`/`ledger_` series that is in neither list. Standard library only.
With --queries, writes every dashboard query, its variables replaced by concrete values,
one a line, so the caller can ask a real Prometheus to parse and run each; each line is
`data<TAB>query` when every series it names is in the --exposed list (so Prometheus must
answer something), else `any<TAB>query`.
"""

import json
import re
import sys

SERIES = re.compile(r"\b((?:luneo|ledger)_[a-zA-Z0-9_:]*)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SEED_VARIABLES = {
    "brand": "label_values(luneo_quota_usage_percentage, brand)",
    "metric": "label_values(luneo_quota_usage_percentage, metric)",
    "source": "label_values(luneo_quota_check_duration_seconds_count, source)",
    "outcome": "label_values(luneo_quota_check_duration_seconds_count, outcome)",
}

failures = []


def fail(message):
    failures.append(message)


def family(name, known):
    """The metric family a series name belongs to: itself, or a histogram's base."""
    if name in known:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return None


def check_names(where, expr, known):
    names = SERIES.findall(expr)
    for name in names:
        if family(name, known) is None:
            fail(f"{where}: {name} is neither exposed nor listed as to come")
    return names


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def concrete(expr):
    """A dashboard query as Prometheus would get it from Grafana."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?[a-z]+\}?", ".*", expr)


def check_dashboard(path, known):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    if "dashboard" in dashboard:
        fail(f"{path}: wrapped in {{dashboard: …}}; the file is the bare model (the API wrap is made at import)")
    if dashboard.get("uid") != "usage-ledger-quotas":
        fail(f"{path}: uid is {dashboard.get('uid')!r}, not the stable usage-ledger-quotas")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        fail(f"{path}: schemaVersion {dashboard.get('schemaVersion')!r} is older than Grafana 9")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    for name, query in SEED_VARIABLES.items():
        if name not in variables:
            fail(f"{path}: variable {name} is missing")
        elif variables[name].get("query") != query:
            fail(f"{path}: variable {name} queries {variables[name].get('query')!r}, not {query!r}")
        else:
            check_names(f"{path}: variable {name}", query, known)

    queries = []
    ids = set()
    referenced = set()
    for panel in panels_of(dashboard):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            fail(f"{path}: panel id {panel.get('id')} is used twice")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        if "gridPos" not in panel:
            fail(f"{path}: panel {title!r} has no gridPos")
        exprs = [t.get("expr", "") for t in panel.get("targets", []) if t.get("expr")]
        if not exprs:
            fail(f"{path}: panel {title!r} has no query")
        for expr in exprs:
            names = check_names(f"{path}: panel {title!r}", expr, known)
            if not names:
                fail(f"{path}: panel {title!r} queries no luneo_/ledger_ series: {expr}")
            referenced.update(family(n, known) or n for n in names)
            queries.append((names, concrete(expr)))
        if any("luneo_quota_usage_percentage" in e for e in exprs):
            check_usage_panel(path, panel)
    return queries, referenced


def check_usage_panel(path, panel):
    """The original capped usage at 100; overage must show, and the thresholds are 75/90."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    title = panel.get("title")
    if defaults.get("max") is not None and defaults["max"] <= 100:
        fail(f"{path}: usage panel {title!r} caps its axis at {defaults['max']}")
    steps = [s.get("value") for s in defaults.get("thresholds", {}).get("steps", [])]
    if steps[1:] != [75, 90]:
        fail(f"{path}: usage panel {title!r} has thresholds {steps[1:]}, not [75, 90]")


def check_rules(path, known):
    """Every luneo_/ledger_ name in a rule file, its comments and annotations included."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {family(n, known) or n for n in check_names(path, text, known)}


def option(argv, name):
    if name not in argv:
        return None
    i = argv.index(name)
    value = argv[i + 1]
    del argv[i : i + 2]
    return value


def read_names(path):
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def main(argv):
    out = option(argv, "--queries")
    exposed_path = option(argv, "--exposed")
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    known = read_names(argv[0])
    exposed = read_names(exposed_path) if exposed_path else set()
    queries, in_dashboard = check_dashboard(argv[1], known)
    in_rules = set()
    for path in argv[2:]:
        in_rules |= check_rules(path, known)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            for names, query in queries:
                kind = "data" if all(family(n, exposed) for n in names) else "any"
                f.write(f"{kind}\t{query}\n")
    for message in failures:
        print(f"FAIL {message}", file=sys.stderr)
    if failures:
        return 1
    print(
        f"dashboard: {len(queries)} queries over {len(in_dashboard)} metrics; "
        f"rules: {len(in_rules)} metrics; every name exposed or listed as to come"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
