"""Runtime plugins: scripts the server runs as supervised child processes.

``--runtime-plugin-locations`` names files and directories; each script found
runs in its own process group with the server configuration in its environment,
its output forwarded to the server log, crashes restarted with back-off, and
everything terminated at shutdown. The author's guide is
``docs/runtime-plugins.md``; the server component is
:class:`lmcache_core.runtime_plugins.launcher.RuntimePluginLauncher`.
"""

from __future__ import annotations

from lmcache_core.runtime_plugins.discovery import (
    RuntimePluginScript,
    discover,
    find_scripts,
    resolve_interpreter,
)
from lmcache_core.runtime_plugins.environment import PluginEnvironment, plugin_config_document
from lmcache_core.runtime_plugins.supervisor import PluginSupervisor, RestartPolicy

__all__ = [
    "PluginEnvironment",
    "PluginSupervisor",
    "RestartPolicy",
    "RuntimePluginScript",
    "discover",
    "find_scripts",
    "plugin_config_document",
    "resolve_interpreter",
]
