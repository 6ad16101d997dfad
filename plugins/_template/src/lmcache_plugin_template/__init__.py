"""lmcache-example-eviction: a template plugin with a FIFO eviction policy.

The module :mod:`lmcache_plugin_template.plugin` is registered under the
``lmcache.plugins`` entry point ``example_eviction``; the policy itself lives in
:mod:`lmcache_plugin_template.policy`.
"""

from __future__ import annotations

__version__ = "0.1.0"
