"""lmcache-example-l2: example third-party L2 storage for the LMCache server.

Two ways to plug storage into the L2 tier without writing a plugin distribution:

* :class:`lmcache_example_l2.memory_adapter.MemoryAdapter`, an
  :class:`~lmcache_core.storage.l2.adapter.L2AdapterV1` subclass, selected with
  ``{"type": "plugin", "module_path": "lmcache_example_l2.memory_adapter",
  "class_name": "MemoryAdapter", ...}``;
* :class:`lmcache_example_l2.directory_client.DirectoryClient`, a native-style
  client (batch submits, an ``eventfd`` signalled on completion), selected with
  ``{"type": "native_plugin", "module_path": "lmcache_example_l2.directory_client",
  "class_name": "DirectoryClient", ...}``.
"""

from __future__ import annotations

__version__ = "0.1.0"
