"""What this build can and cannot run for a given configuration.

Some plugins are registered before their behaviour has landed (they are listed as
"not implemented yet"). The rule the server applies at start-up:

* what the server must build, and every feature the operator turned on
  explicitly (the eviction policy once the engine runs, an L2 adapter, a
  non-default engine or L2 policy, tracing, the lookup-hash log, runtime plugins,
  the ``/run_script`` import list, a GDS or DAX L1) must work, or start-up fails
  and says why;
* a default part that is not implemented (a default L2 policy or a default
  subscriber registered as not implemented; the whole data path in builds
  without an engine) is reported as a warning at start-up and in ``/status``,
  and nothing pretends to work. In the default plugin set every default part is
  implemented, so a default configuration reports none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcache_core.config.resolution import Selection
from lmcache_core.config.server import ServerConfig
from lmcache_core.http.auth import admin_api_advisories
from lmcache_core.http.script_sandbox import import_problems
from lmcache_core.plugin.names import normalize_name
from lmcache_core.plugin.specs import PluginSpec, SubscriberCategory
from lmcache_core.runtime_plugins.discovery import discovery_problem

DATA_PATH_ISSUE = "the data-path issue (#3)"


@dataclass
class StartupReport:
    """Problems that stop the server, and gaps it starts with.

    Attributes:
        errors: Each one stops start-up; the first is printed.
        warnings: Logged at start-up and shown in ``/status``.
        pending: Selected plugins registered but not implemented yet.
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        """JSON-ready form."""
        return {"errors": self.errors, "warnings": self.warnings, "pending": self.pending}


def _pending(spec: PluginSpec) -> str:
    return f"{spec.kind.value} {spec.name!r} is not implemented yet: {spec.not_implemented}"


def _split_selection(
    selection: Selection, report: StartupReport
) -> tuple[list[tuple[str, PluginSpec]], list[PluginSpec]]:
    """Separate the plugins the operator opted into from the default data path."""
    opt_in: list[tuple[str, PluginSpec]] = []
    defaults: list[PluginSpec] = []
    if selection.engine.not_implemented:
        defaults.append(selection.eviction_policy)
    else:  # the data path builds the policy, so it must exist
        opt_in.append(("--eviction-policy", selection.eviction_policy))
    for flag, spec in (
        ("--engine-type", selection.engine),
        ("--l2-store-policy", selection.store_policy),
        ("--l2-prefetch-policy", selection.prefetch_policy),
    ):
        if normalize_name(spec.name) == "default":
            defaults.append(spec)
        else:
            opt_in.append((flag, spec))
    for adapter in selection.adapters:
        opt_in.append((f"--l2-adapter #{adapter.index}", adapter.spec))
        if getattr(adapter.config, "serde", None):
            report.errors.append(
                f"--l2-adapter #{adapter.index} ({adapter.spec.name}): serde transforms are "
                "not implemented yet"
            )
    for subscriber in selection.subscribers:
        if subscriber.category is SubscriberCategory.TRACING or subscriber.enabled_when:
            opt_in.append(("observability", subscriber))
        else:
            defaults.append(subscriber)
    return opt_in, defaults


def _unavailable_features(config: ServerConfig) -> list[str]:
    """Core features given on the command line that this build cannot run yet."""
    errors = []
    if config.mp.runtime_plugin_locations:
        problem = discovery_problem(config.mp.runtime_plugin_locations)
        if problem is not None:
            errors.append(problem)
    errors.extend(
        f"--script-allowed-imports: {problem}"
        for problem in import_problems(config.mp.script_allowed_imports)
    )
    if config.gds_l1.gds_l1_path is not None:
        errors.append(
            "--gds-l1-path: the GDS L1 tier needs CUDA and cuFile and is not implemented yet"
        )
    return errors


def check_startup(config: ServerConfig, selection: Selection) -> StartupReport:
    """Decide what stops start-up and what is only reported.

    Args:
        config: The validated configuration.
        selection: The plugins it selects.

    Returns:
        The report; the server refuses to start when ``errors`` is not empty.
    """
    report = StartupReport()
    opt_in, defaults = _split_selection(selection, report)
    report.errors.extend(
        f"{flag}: {_pending(spec)}" for flag, spec in opt_in if spec.not_implemented
    )
    report.errors.extend(_unavailable_features(config))
    report.pending = [_pending(spec) for spec in defaults if spec.not_implemented]
    if selection.engine.not_implemented:
        mp = config.mp
        report.warnings.append(
            "this build has no data path yet: the ZeroMQ request server on "
            f"{mp.host}:{mp.port} is not started and only the HTTP admin API runs; it lands "
            f"with {DATA_PATH_ISSUE}"
        )
    report.warnings.extend(config.advisories())
    report.warnings.extend(admin_api_advisories(config))
    return report
