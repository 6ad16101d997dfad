"""The live A/B switch (`benchmarks/live_alternate/sitecustomize.py`) follows the round."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lmcache_engine_blend.unified_lookup import UnifiedLookups

SITE = Path(__file__).resolve().parent.parent / "benchmarks" / "live_alternate" / "sitecustomize.py"


def test_the_switch_is_on_for_odd_rounds_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch = tmp_path / "patch.py"
    patch.write_text("def install(switch):\n    pass\n")
    seen: list[tuple[str, bool]] = []
    switch: list[Any] = []

    def recorder(name: str) -> Any:
        def call(self: Any, ctx: Any, key: Any, *args: Any) -> str:
            seen.append((key.request_id, switch[0].on))
            return name

        return call

    # Stand-ins the site module wraps (restored after the test): only the switch is checked.
    for name in ("try_inline", "cb_unified_lookup"):
        monkeypatch.setattr(UnifiedLookups, name, recorder(name))
    monkeypatch.setenv("LMCACHE_BENCH_ALTERNATE", str(patch))
    spec = importlib.util.spec_from_file_location("live_alternate_site", SITE)
    assert spec is not None and spec.loader is not None
    site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site)  # installs the patch and wraps the two stand-ins
    assert site.SWITCH is not None
    switch.append(site.SWITCH)
    lookups: Any = UnifiedLookups
    for rid in ("fresh-5-0", "fresh-5-1", "repeat-64-10", "repeat-64-11", "no-number"):
        key = SimpleNamespace(request_id=rid)
        assert lookups.try_inline(None, None, key, 1) == "try_inline"
        assert lookups.cb_unified_lookup(None, None, key, 1) == "cb_unified_lookup"
    on = {rid: state for rid, state in seen}
    assert on == {
        "fresh-5-0": False,
        "fresh-5-1": True,
        "repeat-64-10": False,
        "repeat-64-11": True,
        "no-number": False,
    }
