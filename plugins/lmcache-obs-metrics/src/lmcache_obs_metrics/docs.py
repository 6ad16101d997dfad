"""The generated tables of ``docs/observability.md``: event types and metrics.

Both tables come from code (:data:`~lmcache_core.observability.events.EVENT_FIELDS`
and :data:`~lmcache_obs_metrics.catalogue.METRICS`) and sit between marker
comments in the page; ``python -m lmcache_obs_metrics.docs [PAGE]`` rewrites
them, and a test fails while the page is stale. Everything outside the markers
is prose, edited by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from lmcache_core.observability.events import EVENT_FIELDS
from lmcache_obs_metrics.catalogue import INSTANCE_LABEL, METRICS, SCRAPE

BEGIN = "<!-- BEGIN GENERATED: {name} (python -m lmcache_obs_metrics.docs) -->"
END = "<!-- END GENERATED: {name} -->"


def render_event_table() -> str:
    """Every event type, its fields and the metrics it feeds."""
    feeds: dict[str, list[str]] = {}
    for metric in METRICS:
        feeds.setdefault(metric.source, []).append(metric.series_name)
    rows = ["| Event type | Fields | Feeds metrics |", "| --- | --- | --- |"]
    for event_type, fields in EVENT_FIELDS.items():
        field_list = ", ".join(f"`{f}`" for f in fields)
        metrics = ", ".join(f"`{m}`" for m in feeds.get(event_type.value, [])) or "-"
        rows.append(f"| `{event_type.value}` | {field_list} | {metrics} |")
    return "\n".join(rows)


def render_metric_table() -> str:
    """Every exported metric: series name, type, labels, where it comes from, meaning."""
    rows = ["| Metric | Type | Labels | Source | Meaning |", "| --- | --- | --- | --- | --- |"]
    for metric in METRICS:
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
        source = "scrape" if metric.source == SCRAPE else f"`{metric.source}`"
        meaning = metric.help.replace("|", "\\|")
        if metric.sampled:
            meaning += " **Sampled.**"
        rows.append(f"| `{metric.series_name}` | {metric.kind} | {labels} | {source} | {meaning} |")
    rows.append("")
    rows.append(f"Every series also carries `{INSTANCE_LABEL}` (`--instance-id`).")
    return "\n".join(rows)


TABLES = {"event-types": render_event_table, "metrics": render_metric_table}
"""Generated block name -> renderer."""


def _constant(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text


def update(page: str) -> str:
    """``page`` with every generated block re-rendered.

    Raises:
        ValueError: A block's markers are missing.
    """
    for name, render in TABLES.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(page):
            raise ValueError(f"the page lacks the markers of the generated block {name!r}")
        block = f"{begin}\n\n{render()}\n\n{end}"
        # A function, not a template: the table's backslashes must stay as they are.
        page = pattern.sub(_constant(block), page)
    return page


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated blocks of the page (``--check``: only report staleness)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("page", nargs="?", default="docs/observability.md", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    current = args.page.read_text(encoding="utf-8")
    fresh = update(current)
    if args.check:
        if fresh != current:
            print(f"{args.page} is stale: run python -m lmcache_obs_metrics.docs {args.page}")
            return 1
        return 0
    if fresh != current:
        args.page.write_text(fresh, encoding="utf-8")
        print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
