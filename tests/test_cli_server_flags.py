"""``lmcache server`` flags end to end: ``--dry-run`` JSON, usage errors, env, ``--help``.

Most tests run the CLI in-process (``lmcache_core.cli.main.main``); a few run the
installed ``lmcache`` script to check real exit codes and that no traceback leaks.
The expected values come from the configuration reference (``tests/helpers.py``).
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from typing import Any

import pytest

from tests.helpers import (
    MOCK_ADAPTER,
    NEGATABLE_FLAGS,
    REFERENCE,
    REGISTERED_ADAPTER_TYPES,
    REQUIRED,
    REQUIRED_ARGS,
    UNSET,
    CliResult,
    all_flags,
    clear_lmcache_env,
    dry_run,
    env_of,
    field_of,
    invoke,
    run_subprocess,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_lmcache_env(monkeypatch)


def server(capsys: pytest.CaptureFixture[str], *args: str, required: bool = True) -> CliResult:
    """``lmcache server [required flags] <args> --dry-run`` in-process."""
    return invoke(capsys, "server", *(REQUIRED_ARGS if required else ()), *args, "--dry-run")


def assert_names(line: str, *flags: str) -> None:
    """Each flag appears in the line as a whole flag, not as part of a longer one."""
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", line), (flag, line)


# --- 1. defaults through the dry-run document ----------------------------------------


def test_dry_run_document_shape(capsys: pytest.CaptureFixture[str]) -> None:
    document = dry_run(capsys)
    assert set(document) == {"config", "plugins", "startup"}
    assert set(document["startup"]) == {"errors", "warnings", "pending"}
    assert list(document["config"]) == [group for group, _ in REFERENCE.values()]


def test_dry_run_defaults_match_reference(capsys: pytest.CaptureFixture[str]) -> None:
    config = dry_run(capsys)["config"]
    mismatches: dict[str, tuple[Any, Any]] = {}
    for group, flag, default in all_flags():
        if default is UNSET or default is REQUIRED:
            continue
        actual = config.get(group, {}).get(field_of(flag), "<missing>")
        if actual != default:
            mismatches[flag] = (actual, default)
    assert mismatches == {}
    assert config["l1"]["l1_size_gb"] == 1
    assert config["eviction"]["eviction_policy"] == "LRU"


def test_instance_id_is_a_fresh_uuid4_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    ids = [dry_run(capsys)["config"]["mp"]["instance_id"] for _ in range(2)]
    for value in ids:
        assert uuid.UUID(value).version == 4
        assert str(uuid.UUID(value)) == value
    assert ids[0] != ids[1]


def test_instance_id_flag(capsys: pytest.CaptureFixture[str]) -> None:
    document = dry_run(capsys, "--instance-id", "mp-node-1")
    assert document["config"]["mp"]["instance_id"] == "mp-node-1"


@pytest.mark.parametrize(
    ("args", "gpu", "cpu"),
    [
        ((), 1, 1),
        (("--max-workers", "4"), 4, 4),
        (("--max-workers", "4", "--max-gpu-workers", "2"), 2, 4),
        (("--max-workers", "4", "--max-cpu-workers", "3"), 4, 3),
        (("--max-gpu-workers", "2"), 2, 1),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_pool_sizes_inherit_max_workers(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], gpu: int, cpu: int
) -> None:
    mp = dry_run(capsys, *args)["config"]["mp"]
    assert (mp["max_gpu_workers"], mp["max_cpu_workers"]) == (gpu, cpu)


@pytest.mark.parametrize(
    ("args", "expected"),
    [((), None), (("--shm-name", ""), ""), (("--shm-name", "foo"), "foo")],
    ids=["unset", "empty", "named"],
)
def test_shm_name(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str | None
) -> None:
    assert dry_run(capsys, *args)["config"]["mp"]["shm_name"] == expected


def test_negatable_booleans(capsys: pytest.CaptureFixture[str]) -> None:
    config = dry_run(capsys, "--no-l1-use-lazy", "--no-gds-l1-use-direct-io")["config"]
    assert config["l1"]["l1_use_lazy"] is False
    assert config["gds_l1"]["gds_l1_use_direct_io"] is False
    config = dry_run(capsys, "--l1-use-lazy", "--gds-l1-use-direct-io")["config"]
    assert config["l1"]["l1_use_lazy"] is True
    assert config["gds_l1"]["gds_l1_use_direct_io"] is True


def test_switches_turn_on(capsys: pytest.CaptureFixture[str]) -> None:
    config = dry_run(
        capsys,
        "--disable-observability",
        "--disable-metrics",
        "--disable-logging",
        "--enable-segmented-prefix",
        "--engine-type",
        "blend",
    )["config"]
    obs = config["observability"]
    assert (obs["disable_observability"], obs["disable_metrics"], obs["disable_logging"]) == (
        True,
        True,
        True,
    )
    assert config["mp"]["enable_segmented_prefix"] is True


# --- 2a. accepted values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "group", "field", "expected"),
    [
        (("--worker-reap-timeout-seconds", "0"), "mp", "worker_reap_timeout_seconds", 0),
        (("--worker-reap-timeout-seconds", "30"), "mp", "worker_reap_timeout_seconds", 30),
        (
            ("--worker-reap-timeout-seconds", "600", "--worker-registration-grace-seconds", "600"),
            "mp",
            "worker_registration_grace_seconds",
            600,
        ),
        (("--metrics-sample-rate", "1"), "observability", "metrics_sample_rate", 1),
        (("--eviction-trigger-watermark", "1"), "eviction", "eviction_trigger_watermark", 1),
        (("--eviction-ratio", "0"), "eviction", "eviction_ratio", 0),
        (("--l1-align-bytes", "65536"), "l1", "l1_align_bytes", 65536),
        (("--hash-algorithm", "sha256_cbor"), "mp", "hash_algorithm", "sha256_cbor"),
        (
            ("--supported-transfer-mode", "lmcache_driven"),
            "mp",
            "supported_transfer_mode",
            "lmcache_driven",
        ),
        (
            ("--engine-type", "blend", "--supported-transfer-mode", "lmcache_driven"),
            "mp",
            "engine_type",
            "blend",
        ),
        (("--engine-type", "blend_legacy"), "mp", "engine_type", "blend_legacy"),
        (("--eviction-policy", "IsolatedLRU"), "eviction", "eviction_policy", "IsolatedLRU"),
        (("--l2-prefetch-policy", "retain"), "l2_policies", "l2_prefetch_policy", "retain"),
        (
            ("--script-allowed-imports", "numpy", "pandas"),
            "mp",
            "script_allowed_imports",
            ["numpy", "pandas"],
        ),
        (
            ("--script-allowed-imports", "numpy", "--script-allowed-imports", "os.path"),
            "mp",
            "script_allowed_imports",
            ["numpy", "os.path"],
        ),
        (("--script-allowed-imports",), "mp", "script_allowed_imports", []),
        (("--runtime-plugin-locations", "a", "b"), "mp", "runtime_plugin_locations", ["a", "b"]),
        (
            (
                "--runtime-plugin-config",
                '{"plugin.frontend.heartbeat_url": "http://localhost:5000/heartbeat"}',
            ),
            "mp",
            "runtime_plugin_config",
            {"plugin.frontend.heartbeat_url": "http://localhost:5000/heartbeat"},
        ),
        (
            ("--l1-devdax-path", "/dev/dax0.0", "--no-l1-use-lazy", "--shm-name", ""),
            "l1",
            "l1_devdax_path",
            "/dev/dax0.0",
        ),
        (
            ("--otlp-endpoint", "http://localhost:4317"),
            "observability",
            "otlp_endpoint",
            "http://localhost:4317",
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_accepted_values(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], group: str, field: str, expected: Any
) -> None:
    assert dry_run(capsys, *args)["config"][group][field] == expected


def test_variadic_flag_stops_at_next_flag(capsys: pytest.CaptureFixture[str]) -> None:
    document = dry_run(
        capsys,
        "--script-allowed-imports",
        "numpy",
        "pandas",
        "--runtime-plugin-locations",
        "a",
        "b",
        "--port",
        "6000",
    )
    mp = document["config"]["mp"]
    assert mp["script_allowed_imports"] == ["numpy", "pandas"]
    assert mp["runtime_plugin_locations"] == ["a", "b"]
    assert mp["port"] == 6000


def test_repeated_l2_adapters_keep_their_order(capsys: pytest.CaptureFixture[str]) -> None:
    first = {**MOCK_ADAPTER, "seed": 11}
    second = {
        "type": "nixl_store",
        "backend": "POSIX",
        "backend_params": {"file_path": "/data/ssd/l2", "use_direct_io": "false"},
        "pool_size": 64,
    }
    third = {**MOCK_ADAPTER, "seed": 33}
    args = [
        arg for adapter in (first, second, third) for arg in ("--l2-adapter", json.dumps(adapter))
    ]
    document = dry_run(capsys, *args)
    assert document["config"]["l2_adapters"]["l2_adapter"] == [first, second, third]
    resolved = document["plugins"]["l2_adapters"]
    assert [a["name"] for a in resolved] == ["mock", "nixl_store", "mock"]
    assert [a["config"].get("seed") for a in resolved] == [11, None, 33]


def test_segmented_prefix_without_blend_warns(capsys: pytest.CaptureFixture[str]) -> None:
    warnings = dry_run(capsys, "--enable-segmented-prefix")["startup"]["warnings"]
    assert any("--enable-segmented-prefix" in warning for warning in warnings), warnings
    warnings = dry_run(capsys, "--enable-segmented-prefix", "--engine-type", "blend")["startup"][
        "warnings"
    ]
    assert not any("--enable-segmented-prefix" in warning for warning in warnings), warnings


# --- 2b. rejected values: exit 2, one "error: " line naming the flag -------------------


def case(case_id: str, *args: str, names: tuple[str, ...], required: bool = True) -> Any:
    return pytest.param(args, names, required, id=case_id)


REJECTED = [
    # worker liveness
    case(
        "reap-10", "--worker-reap-timeout-seconds", "10", names=("--worker-reap-timeout-seconds",)
    ),
    case(
        "reap-29.9",
        "--worker-reap-timeout-seconds",
        "29.9",
        names=("--worker-reap-timeout-seconds",),
    ),
    case(
        "reap-negative",
        "--worker-reap-timeout-seconds=-1",
        names=("--worker-reap-timeout-seconds",),
    ),
    case(
        "grace-below-reap",
        "--worker-reap-timeout-seconds",
        "200",
        "--worker-registration-grace-seconds",
        "100",
        names=("--worker-registration-grace-seconds", "--worker-reap-timeout-seconds"),
    ),
    case(
        "grace-below-default-reap",
        "--worker-registration-grace-seconds",
        "60",
        names=("--worker-registration-grace-seconds",),
    ),
    # ratios
    case(
        "watermark-above-1",
        "--eviction-trigger-watermark",
        "1.5",
        names=("--eviction-trigger-watermark",),
    ),
    case(
        "watermark-below-0",
        "--eviction-trigger-watermark=-0.1",
        names=("--eviction-trigger-watermark",),
    ),
    case("ratio-above-1", "--eviction-ratio", "1.01", names=("--eviction-ratio",)),
    case("ratio-below-0", "--eviction-ratio=-0.5", names=("--eviction-ratio",)),
    # required flags
    case("missing-l1-size-gb", "--eviction-policy", "LRU", names=("--l1-size-gb",), required=False),
    case(
        "missing-eviction-policy", "--l1-size-gb", "1", names=("--eviction-policy",), required=False
    ),
    case("l1-size-gb-zero", "--l1-size-gb", "0", names=("--l1-size-gb",)),
    case("l1-size-gb-not-a-number", "--l1-size-gb", "lots", names=("--l1-size-gb",)),
    # bad integers
    case("int-port", "--port", "abc", names=("--port",)),
    case("int-chunk-size", "--chunk-size", "1.5", names=("--chunk-size",)),
    case("int-max-workers", "--max-workers", "two", names=("--max-workers",)),
    case("int-max-gpu-workers", "--max-gpu-workers", "x", names=("--max-gpu-workers",)),
    case("int-max-cpu-workers", "--max-cpu-workers", "0", names=("--max-cpu-workers",)),
    case("int-http-port", "--http-port", "web", names=("--http-port",)),
    case("int-prometheus-port", "--prometheus-port", "9.5", names=("--prometheus-port",)),
    case("int-l1-align-bytes", "--l1-align-bytes", "4k", names=("--l1-align-bytes",)),
    case(
        "int-event-bus-queue-size",
        "--event-bus-queue-size",
        "many",
        names=("--event-bus-queue-size",),
    ),
    case(
        "int-lookup-hash-log-max-files",
        "--lookup-hash-log-max-files",
        "all",
        names=("--lookup-hash-log-max-files",),
    ),
    case(
        "int-lookup-hash-log-rotation-max-size",
        "--lookup-hash-log-rotation-max-size",
        "100MB",
        names=("--lookup-hash-log-rotation-max-size",),
    ),
    case(
        "int-l2-prefetch-max-in-flight",
        "--l2-prefetch-max-in-flight",
        "x",
        names=("--l2-prefetch-max-in-flight",),
    ),
    case(
        "int-periodic-notifier-interval-ms",
        "--periodic-notifier-interval-ms",
        "fast",
        names=("--periodic-notifier-interval-ms",),
    ),
    # bad floats
    case("float-eviction-ratio", "--eviction-ratio", "half", names=("--eviction-ratio",)),
    case("float-l1-init-size-gb", "--l1-init-size-gb", "big", names=("--l1-init-size-gb",)),
    case(
        "float-l1-write-ttl-seconds",
        "--l1-write-ttl-seconds",
        "long",
        names=("--l1-write-ttl-seconds",),
    ),
    case(
        "float-l1-read-ttl-seconds", "--l1-read-ttl-seconds", "", names=("--l1-read-ttl-seconds",)
    ),
    case(
        "float-metrics-sample-rate",
        "--metrics-sample-rate",
        "often",
        names=("--metrics-sample-rate",),
    ),
    case(
        "float-reap-timeout",
        "--worker-reap-timeout-seconds",
        "soon",
        names=("--worker-reap-timeout-seconds",),
    ),
    case(
        "float-lookup-hash-log-rotation-interval",
        "--lookup-hash-log-rotation-interval",
        "daily",
        names=("--lookup-hash-log-rotation-interval",),
    ),
    # choices
    case("hash-algorithm-md5", "--hash-algorithm", "md5", names=("--hash-algorithm",)),
    case(
        "transfer-mode-both",
        "--supported-transfer-mode",
        "both",
        names=("--supported-transfer-mode",),
    ),
    # alignment
    case("align-3000", "--l1-align-bytes", "3000", names=("--l1-align-bytes",)),
    case("align-6144", "--l1-align-bytes", "6144", names=("--l1-align-bytes",)),
    case("align-0", "--l1-align-bytes", "0", names=("--l1-align-bytes",)),
    # port ranges
    case("port-0", "--port", "0", names=("--port",)),
    case("port-65536", "--port", "65536", names=("--port",)),
    case("http-port-0", "--http-port", "0", names=("--http-port",)),
    case("http-port-70000", "--http-port", "70000", names=("--http-port",)),
    case("prometheus-port-0", "--prometheus-port", "0", names=("--prometheus-port",)),
    case("prometheus-port-65536", "--prometheus-port", "65536", names=("--prometheus-port",)),
    # metrics sample rate in (0, 1]
    case("sample-rate-0", "--metrics-sample-rate", "0", names=("--metrics-sample-rate",)),
    case("sample-rate-1.5", "--metrics-sample-rate", "1.5", names=("--metrics-sample-rate",)),
    case("sample-rate-negative", "--metrics-sample-rate=-0.1", names=("--metrics-sample-rate",)),
    # tracing
    case("tracing-without-otlp", "--enable-tracing", names=("--enable-tracing", "--otlp-endpoint")),
    # runtime plugin config must be a JSON object
    case(
        "plugin-config-list",
        "--runtime-plugin-config",
        "[1, 2]",
        names=("--runtime-plugin-config",),
    ),
    case(
        "plugin-config-string", "--runtime-plugin-config", '"x"', names=("--runtime-plugin-config",)
    ),
    case(
        "plugin-config-malformed",
        "--runtime-plugin-config",
        "{nope",
        names=("--runtime-plugin-config",),
    ),
    # module names
    case(
        "import-not-a-module",
        "--script-allowed-imports",
        "numpy",
        "not-a-module",
        names=("--script-allowed-imports", "not-a-module"),
    ),
    case("import-digit", "--script-allowed-imports", "1abc", names=("--script-allowed-imports",)),
    case(
        "import-keyword", "--script-allowed-imports", "import", names=("--script-allowed-imports",)
    ),
    # L2 adapter JSON
    case("adapter-malformed-json", "--l2-adapter", '{"type": "mock",', names=("--l2-adapter",)),
    case(
        "adapter-without-type",
        "--l2-adapter",
        '{"backend": "POSIX"}',
        names=("--l2-adapter", "type"),
    ),
    case("adapter-empty-type", "--l2-adapter", '{"type": ""}', names=("--l2-adapter", "type")),
    case("adapter-not-an-object", "--l2-adapter", "[1]", names=("--l2-adapter",)),
    case(
        "adapter-second-malformed",
        "--l2-adapter",
        json.dumps(MOCK_ADAPTER),
        "--l2-adapter",
        "{bad",
        names=("--l2-adapter",),
    ),
    case(
        "adapter-unknown-type", "--l2-adapter", '{"type": "nope"}', names=("--l2-adapter", "nope")
    ),
    case(
        "adapter-unknown-field",
        "--l2-adapter",
        json.dumps({**MOCK_ADAPTER, "bogus_field": 1}),
        names=("--l2-adapter", "bogus_field"),
    ),
    case(
        "adapter-missing-field",
        "--l2-adapter",
        '{"type": "mock", "mock_bandwidth_gb": 1}',
        names=("--l2-adapter", "max_size_gb"),
    ),
    case(
        "adapter-bad-field-value",
        "--l2-adapter",
        json.dumps({**MOCK_ADAPTER, "failure_rate": 2}),
        names=("--l2-adapter", "failure_rate"),
    ),
    # engines and transfer modes
    case(
        "blend-engine-driven",
        "--engine-type",
        "blend",
        "--supported-transfer-mode",
        "engine_driven",
        names=("--engine-type", "--supported-transfer-mode"),
    ),
    case(
        "blend-legacy-engine-driven",
        "--engine-type",
        "blend_legacy",
        "--supported-transfer-mode",
        "engine_driven",
        names=("--engine-type", "--supported-transfer-mode"),
    ),
    # DAX-backed L1
    case(
        "devdax-lazy",
        "--l1-devdax-path",
        "/dev/dax0.0",
        names=("--l1-devdax-path", "--no-l1-use-lazy"),
    ),
    case(
        "devdax-shm-unset",
        "--l1-devdax-path",
        "/dev/dax0.0",
        "--no-l1-use-lazy",
        names=("--l1-devdax-path", "--shm-name"),
    ),
    case(
        "devdax-shm-named",
        "--l1-devdax-path",
        "/dev/dax0.0",
        "--no-l1-use-lazy",
        "--shm-name",
        "seg",
        names=("--l1-devdax-path", "--shm-name"),
    ),
    # GDS L1 exposes no L1 buffer for byte-array adapters
    case(
        "gds-with-adapter",
        "--gds-l1-path",
        "/nvme",
        "--l2-adapter",
        json.dumps(MOCK_ADAPTER),
        names=("--gds-l1-path", "--l2-adapter"),
    ),
    # plugin names
    case("unknown-engine", "--engine-type", "turbo", names=("--engine-type", "turbo")),
    case(
        "unknown-eviction-policy", "--eviction-policy", "FIFO", names=("--eviction-policy", "FIFO")
    ),
    case("unknown-store-policy", "--l2-store-policy", "everywhere", names=("--l2-store-policy",)),
    case(
        "unknown-prefetch-policy", "--l2-prefetch-policy", "eager", names=("--l2-prefetch-policy",)
    ),
    # command-line syntax
    case("unknown-flag", "--no-such-flag", names=("--no-such-flag",)),
    case("missing-value", "--port", names=("--port",)),
]


@pytest.mark.parametrize(("args", "names", "required"), REJECTED)
def test_rejected(
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    names: tuple[str, ...],
    required: bool,
) -> None:
    if args == ("--port",):  # a flag without its value must come last
        result = invoke(capsys, "server", *REQUIRED_ARGS, "--dry-run", "--port")
    else:
        result = server(capsys, *args, required=required)
    line = result.assert_usage_error()
    assert_names(line, *names)
    assert result.out == ""


def test_unknown_adapter_type_lists_installed_types(capsys: pytest.CaptureFixture[str]) -> None:
    line = server(capsys, "--l2-adapter", '{"type": "nope"}').assert_usage_error("--l2-adapter")
    for adapter_type in REGISTERED_ADAPTER_TYPES:
        assert re.search(rf"(?<![\w]){re.escape(adapter_type)}(?![\w])", line), (adapter_type, line)


@pytest.mark.slow  # a real process: seconds of imports
@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("--worker-reap-timeout-seconds", "10"), ("--worker-reap-timeout-seconds",)),
        (("--l2-adapter", "{not json"), ("--l2-adapter",)),
        (("--l2-adapter", '{"type": "nope"}'), ("--l2-adapter",)),
        (("--enable-tracing",), ("--enable-tracing",)),
        (
            ("--engine-type", "blend", "--supported-transfer-mode", "engine_driven"),
            ("--engine-type",),
        ),
    ],
    ids=["reap-timeout", "malformed-adapter", "unknown-adapter", "tracing", "blend-engine-driven"],
)
def test_rejected_in_a_real_process(args: tuple[str, ...], names: tuple[str, ...]) -> None:
    result = run_subprocess("server", *REQUIRED_ARGS, *args, "--dry-run")
    line = result.assert_usage_error()
    assert_names(line, *names)


@pytest.mark.slow  # a real process: seconds of imports
def test_missing_required_flag_in_a_real_process() -> None:
    result = run_subprocess("server", "--eviction-policy", "LRU", "--dry-run")
    result.assert_usage_error("--l1-size-gb", "LMCACHE_L1_SIZE_GB")


# --- 3. environment variables through the CLI ------------------------------------------


def test_env_makes_required_flags_optional(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_L1_SIZE_GB", "8")
    monkeypatch.setenv("LMCACHE_EVICTION_POLICY", "noop")
    result = server(capsys, required=False)
    assert result.code == 0, result.err
    config = result.config()
    assert config["l1"]["l1_size_gb"] == 8
    assert config["eviction"]["eviction_policy"] == "noop"
    assert result.json()["plugins"]["eviction_policy"]["name"] == "noop"


@pytest.mark.parametrize(
    ("env", "group", "field", "expected"),
    [
        ({"LMCACHE_PORT": "6000"}, "mp", "port", 6000),
        ({"LMCACHE_MAX_WORKERS": "4"}, "mp", "max_cpu_workers", 4),
        (
            {"LMCACHE_SCRIPT_ALLOWED_IMPORTS": "numpy pandas"},
            "mp",
            "script_allowed_imports",
            ["numpy", "pandas"],
        ),
        ({"LMCACHE_SHM_NAME": ""}, "mp", "shm_name", ""),
        (
            {"LMCACHE_LOOKUP_HASH_LOG_DIR": "/tmp/h"},
            "lookup_hash_log",
            "lookup_hash_log_dir",
            "/tmp/h",
        ),
        ({"LMCACHE_HTTP_PORT": "9000"}, "http", "http_port", 9000),
        ({"LMCACHE_L1_USE_LAZY": "false"}, "l1", "l1_use_lazy", False),
        ({"LMCACHE_GDS_L1_USE_DIRECT_IO": "false"}, "gds_l1", "gds_l1_use_direct_io", False),
        ({"LMCACHE_L1_READ_TTL_SECONDS": "42"}, "l1_ttl", "l1_read_ttl_seconds", 42),
        ({"LMCACHE_EVICTION_RATIO": "0.3"}, "eviction", "eviction_ratio", 0.3),
        ({"LMCACHE_L2_STORE_POLICY": "skip_l1"}, "l2_policies", "l2_store_policy", "skip_l1"),
        (
            {"LMCACHE_L2_ADAPTER": json.dumps(MOCK_ADAPTER)},
            "l2_adapters",
            "l2_adapter",
            [MOCK_ADAPTER],
        ),
        ({"LMCACHE_METRICS_SAMPLE_RATE": "1"}, "observability", "metrics_sample_rate", 1),
        ({"LMCACHE_DISABLE_LOGGING": "true"}, "observability", "disable_logging", True),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_env_override(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    group: str,
    field: str,
    expected: Any,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert dry_run(capsys)["config"][group][field] == expected


def test_env_l2_adapter_is_resolved(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "LMCACHE_L2_ADAPTER", json.dumps([MOCK_ADAPTER, {**MOCK_ADAPTER, "seed": 2}])
    )
    adapters = dry_run(capsys)["plugins"]["l2_adapters"]
    assert [(a["name"], a["config"]["seed"]) for a in adapters] == [("mock", 0), ("mock", 2)]


@pytest.mark.parametrize(
    ("env", "args", "group", "field", "expected"),
    [
        ({"LMCACHE_PORT": "6000"}, ("--port", "7000"), "mp", "port", 7000),
        ({"LMCACHE_PORT": "bogus"}, ("--port", "7000"), "mp", "port", 7000),
        ({"LMCACHE_L1_SIZE_GB": "9"}, (), "l1", "l1_size_gb", 1),
        ({"LMCACHE_EVICTION_POLICY": "noop"}, (), "eviction", "eviction_policy", "LRU"),
        ({"LMCACHE_L1_USE_LAZY": "false"}, ("--l1-use-lazy",), "l1", "l1_use_lazy", True),
        (
            {"LMCACHE_HTTP_HOST": "10.0.0.1"},
            ("--http-host", "127.0.0.1"),
            "http",
            "http_host",
            "127.0.0.1",
        ),
        ({"LMCACHE_SHM_NAME": "seg"}, ("--shm-name", ""), "mp", "shm_name", ""),
        (
            {"LMCACHE_SCRIPT_ALLOWED_IMPORTS": "numpy pandas"},
            ("--script-allowed-imports", "json"),
            "mp",
            "script_allowed_imports",
            ["json"],
        ),
        (
            {"LMCACHE_L2_ADAPTER": '{"type": "nope"}'},
            ("--l2-adapter", json.dumps(MOCK_ADAPTER)),
            "l2_adapters",
            "l2_adapter",
            [MOCK_ADAPTER],
        ),
        (
            {"LMCACHE_EVICTION_RATIO": "0.9"},
            ("--eviction-ratio", "0.1"),
            "eviction",
            "eviction_ratio",
            0.1,
        ),
        ({"LMCACHE_MAX_WORKERS": "8"}, ("--max-workers", "2"), "mp", "max_gpu_workers", 2),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_flag_beats_env(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: tuple[str, ...],
    group: str,
    field: str,
    expected: Any,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert dry_run(capsys, *args)["config"][group][field] == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LMCACHE_PORT", "abc"),
        ("LMCACHE_HTTP_PORT", "0"),
        ("LMCACHE_L1_USE_LAZY", "maybe"),
        ("LMCACHE_EVICTION_TRIGGER_WATERMARK", "1.5"),
        ("LMCACHE_METRICS_SAMPLE_RATE", "0"),
        ("LMCACHE_SCRIPT_ALLOWED_IMPORTS", "numpy not-a-module"),
        ("LMCACHE_L2_ADAPTER", "{oops"),
        ("LMCACHE_WORKER_REAP_TIMEOUT_SECONDS", "10"),
        ("LMCACHE_ENABLE_TRACING", "true"),
    ],
)
def test_invalid_env_names_flag_and_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    flag = "--" + name.removeprefix("LMCACHE_").lower().replace("_", "-")
    assert env_of(flag) == name
    line = server(capsys).assert_usage_error(name)
    assert_names(line, flag)


@pytest.mark.slow  # a real process: seconds of imports
def test_invalid_env_in_a_real_process() -> None:
    result = run_subprocess(
        "server", "--eviction-policy", "LRU", "--dry-run", env={"LMCACHE_L1_SIZE_GB": "abc"}
    )
    result.assert_usage_error("--l1-size-gb", "LMCACHE_L1_SIZE_GB")


def test_env_does_not_leak_from_the_real_environment(capsys: pytest.CaptureFixture[str]) -> None:
    config = dry_run(capsys)["config"]
    assert config["mp"]["port"] == 5555
    assert config["http"]["http_port"] == 8080


# --- 4. the reference's Full Example ---------------------------------------------------

FULL_EXAMPLE = r"""
lmcache server \
    --host 0.0.0.0 \
    --port 6555 \
    --chunk-size 512 \
    --max-workers 4 \
    --max-gpu-workers 2 \
    --hash-algorithm blake3 \
    --engine-type default \
    --lookup-hash-log-dir /data/lmcache/lookup_hashes \
    --lookup-hash-log-rotation-interval 21600 \
    --lookup-hash-log-rotation-max-size 104857600 \
    --lookup-hash-log-max-files 100 \
    --l1-size-gb 100 \
    --l1-use-lazy \
    --l1-init-size-gb 20 \
    --l1-align-bytes 4096 \
    --l1-write-ttl-seconds 600 \
    --l1-read-ttl-seconds 300 \
    --eviction-policy noop \
    --l2-store-policy skip_l1 \
    --eviction-trigger-watermark 0.9 \
    --eviction-ratio 0.1 \
    --l2-prefetch-policy default \
    --l2-prefetch-max-in-flight 8 \
    --periodic-notifier-interval-ms 5 \
    --l2-adapter '{"type": "nixl_store", "backend": "POSIX", "backend_params": {"file_path": "/data/lmcache/l2", "use_direct_io": "false"}, "pool_size": 64}' \
    --prometheus-port 9090 \
    --metrics-sample-rate 0.01 \
    --enable-tracing \
    --otlp-endpoint http://localhost:4317
"""  # noqa: E501 - copied verbatim from the reference

FULL_EXAMPLE_ADAPTER = {
    "type": "nixl_store",
    "backend": "POSIX",
    "backend_params": {"file_path": "/data/lmcache/l2", "use_direct_io": "false"},
    "pool_size": 64,
}

FULL_EXAMPLE_VALUES = {
    ("mp", "host"): "0.0.0.0",
    ("mp", "port"): 6555,
    ("mp", "chunk_size"): 512,
    ("mp", "max_workers"): 4,
    ("mp", "max_gpu_workers"): 2,
    ("mp", "max_cpu_workers"): 4,
    ("mp", "hash_algorithm"): "blake3",
    ("mp", "engine_type"): "default",
    ("lookup_hash_log", "lookup_hash_log_dir"): "/data/lmcache/lookup_hashes",
    ("lookup_hash_log", "lookup_hash_log_rotation_interval"): 21600,
    ("lookup_hash_log", "lookup_hash_log_rotation_max_size"): 104857600,
    ("lookup_hash_log", "lookup_hash_log_max_files"): 100,
    ("l1", "l1_size_gb"): 100,
    ("l1", "l1_use_lazy"): True,
    ("l1", "l1_init_size_gb"): 20,
    ("l1", "l1_align_bytes"): 4096,
    ("l1_ttl", "l1_write_ttl_seconds"): 600,
    ("l1_ttl", "l1_read_ttl_seconds"): 300,
    ("eviction", "eviction_policy"): "noop",
    ("l2_policies", "l2_store_policy"): "skip_l1",
    ("eviction", "eviction_trigger_watermark"): 0.9,
    ("eviction", "eviction_ratio"): 0.1,
    ("l2_policies", "l2_prefetch_policy"): "default",
    ("l2_policies", "l2_prefetch_max_in_flight"): 8,
    ("l2_policies", "periodic_notifier_interval_ms"): 5,
    ("l2_adapters", "l2_adapter"): [FULL_EXAMPLE_ADAPTER],
    ("observability", "prometheus_port"): 9090,
    ("observability", "metrics_sample_rate"): 0.01,
    ("observability", "enable_tracing"): True,
    ("observability", "otlp_endpoint"): "http://localhost:4317",
}


def full_example_args() -> list[str]:
    argv = shlex.split(FULL_EXAMPLE.replace("\\\n", " "))
    assert argv[:2] == ["lmcache", "server"]
    return argv[1:]


def test_full_example_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke(capsys, *full_example_args(), "--dry-run")
    assert result.code == 0, result.err
    document = result.json()
    config = document["config"]
    actual = {key: config[key[0]][key[1]] for key in FULL_EXAMPLE_VALUES}
    assert actual == FULL_EXAMPLE_VALUES
    plugins = document["plugins"]
    assert plugins["engine"]["name"] == "default"
    assert plugins["eviction_policy"]["name"] == "noop"
    assert plugins["store_policy"]["name"] == "skip_l1"
    assert plugins["prefetch_policy"]["name"] == "default"
    [adapter] = plugins["l2_adapters"]
    assert adapter["name"] == "nixl_store"
    assert adapter["config"].items() >= FULL_EXAMPLE_ADAPTER.items()
    assert "tracing" in {s["name"] for s in plugins["subscribers"]}


@pytest.mark.slow  # a real process: seconds of imports
def test_full_example_in_a_real_process() -> None:
    result = run_subprocess(*full_example_args(), "--dry-run")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert result.config()["mp"]["port"] == 6555


# --- 5. --help ------------------------------------------------------------------------

PANEL_TITLE = re.compile(r"^╭─ (.+?) ─+╮$")
OPTION_ROW = re.compile(r"^│ (--[a-z0-9-]+)")


def help_panels(text: str) -> dict[str, list[str]]:
    """Panel title -> the flags of its rows, in the order shown."""
    panels: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        title = PANEL_TITLE.match(line.strip())
        if title:
            current = panels.setdefault(title.group(1), [])
            continue
        row = OPTION_ROW.match(line.strip())
        if row and current is not None:
            current.append(row.group(1))
    return panels


@pytest.fixture
def help_text(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    result = invoke(capsys, "server", "--help")
    assert result.code == 0, result.err
    return result.out


def test_help_panels_in_reference_order(help_text: str) -> None:
    shown = [title for title in help_panels(help_text) if title in REFERENCE]
    assert shown == list(REFERENCE)


def test_help_lists_every_flag_in_its_panel(help_text: str) -> None:
    panels = help_panels(help_text)
    for title, (_, flags) in REFERENCE.items():
        assert panels.get(title) == list(flags), title


def test_help_shows_negative_switches_and_env_vars(help_text: str) -> None:
    for flag in NEGATABLE_FLAGS:
        assert "--no-" + flag.removeprefix("--") in help_text
    words = set(re.findall(r"LMCACHE_[A-Z0-9_]+", help_text))
    missing = [env_of(flag) for _, flag, _ in all_flags() if env_of(flag) not in words]
    assert missing == []


@pytest.mark.slow  # a real process: seconds of imports
def test_help_in_a_real_process() -> None:
    result = run_subprocess("server", "--help")
    assert result.code == 0, result.err
    shown = [title for title in help_panels(result.out) if title in REFERENCE]
    assert shown == list(REFERENCE)
    flags = {flag for flags in help_panels(result.out).values() for flag in flags}
    assert {flag for _, flag, _ in all_flags()} <= flags
