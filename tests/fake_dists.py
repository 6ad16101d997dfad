"""Real (if tiny) installed distributions on a temporary sys.path entry.

Each fake distribution is a ``*.dist-info`` folder with METADATA and
entry_points.txt next to its module, exactly what pip leaves behind, so the
registry discovers it through importlib.metadata like any installed plugin.
"""

from __future__ import annotations

import textwrap
import uuid
from importlib import metadata
from pathlib import Path


class FakeSite:
    """A folder of fake installed distributions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(
        self, dist: str, source: str, *, version: str = "1.0.0", ep_name: str | None = None
    ) -> str:
        """Install distribution ``dist`` whose plugin module holds ``source``.

        Returns:
            The (unique) module name, so tests can check whether it was imported.
        """
        module = f"fake_{dist.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (self.root / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[lmcache.plugins]\n{ep_name or dist} = {module}\n")
        return module

    def entry_points(self) -> list[metadata.EntryPoint]:
        """The ``lmcache.plugins`` entry points of the fake distributions only."""
        return [
            ep
            for dist in metadata.distributions(path=[str(self.root)])
            for ep in dist.entry_points
            if ep.group == "lmcache.plugins"
        ]


def eviction_plugin(name: str, *, aliases: tuple[str, ...] = ()) -> str:
    """Source of a healthy plugin module registering one eviction policy."""
    return f"""
        from lmcache_core.plugin import EvictionPolicySpec, hookimpl

        def build(config=None):
            return {{"policy": {name!r}}}

        @hookimpl
        def lmcache_register_eviction_policies():
            return [EvictionPolicySpec(name={name!r}, factory=build, aliases={aliases!r},
                                       description="fake policy")]
        """
