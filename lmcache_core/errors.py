"""Exception hierarchy shared by the core and its plugins.

Every error the core raises on purpose derives from :class:`LMCacheError`, so the
CLI can print one clear line for it instead of a traceback.
"""

from __future__ import annotations


class LMCacheError(Exception):
    """Base class of every error the core raises deliberately."""


class ConfigError(LMCacheError):
    """A configuration value is missing, malformed or inconsistent.

    Attributes:
        flag: The command-line flag the problem is about (for example
            ``--l1-size-gb``), or ``None`` when it concerns several flags.
        problem: What is wrong, in one sentence.
    """

    def __init__(self, flag: str | None, problem: str) -> None:
        self.flag = flag
        self.problem = problem
        super().__init__(f"{flag}: {problem}" if flag else problem)


class PluginError(LMCacheError):
    """Base class of plugin discovery, resolution and construction errors."""


class PluginLoadError(PluginError):
    """A plugin's entry point could not be imported or registered."""


class DuplicatePluginError(PluginError):
    """Two distributions register the same plugin name for the same kind."""


class UnknownPluginError(PluginError):
    """A configured plugin name is not registered for its kind."""


class PluginNotImplementedError(PluginError):
    """A registered plugin was selected whose behaviour has not landed yet.

    The plugin is installed and listed (``lmcache plugins list`` says "not
    implemented yet"), but building it fails loudly instead of pretending.
    """


class StartupError(LMCacheError):
    """The server cannot start with this configuration in this environment."""
