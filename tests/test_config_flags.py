"""The configuration groups against the configuration reference, through ``load_config``.

These tests need no plugins: they cover the defaults, the value rules and the
``LMCACHE_<FLAG_NAME>`` environment variables of every flag group. The expected
values come from the hand-written tables in ``tests/helpers.py``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from lmcache_core.config.loading import load_config
from lmcache_core.errors import ConfigError
from tests.helpers import (
    MOCK_ADAPTER,
    REQUIRED,
    REQUIRED_VALUES,
    UNSET,
    all_flags,
    clear_lmcache_env,
    env_of,
    field_of,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_lmcache_env(monkeypatch)


def load(**values: Any) -> dict[str, Any]:
    """``load_config`` with the required flags, as the dry-run's JSON ``config``."""
    return load_config({**REQUIRED_VALUES, **values}).public_dict()


def config_error(**values: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(values)
    return info.value


# --- 1. defaults ----------------------------------------------------------------

DEFAULT_CASES = [
    pytest.param(group, flag, default, id=flag)
    for group, flag, default in all_flags()
    if default is not UNSET and default is not REQUIRED
]


def test_reference_lists_every_flag_once() -> None:
    flags = [flag for _, flag, _ in all_flags()]
    # the reference's 48 + --session-ttl-seconds, --http-admin-token, --run-script-api-enabled,
    # --quota-state-file, --request-deadline-seconds, --kv-event-log-size, --api-key-file, and
    # upstream's extra blend flags --enable-dedup-content and --enable-blend-reorder (the blend
    # engine plugin's)
    assert len(flags) == len(set(flags)) == 57


@pytest.mark.parametrize(("group", "flag", "default"), DEFAULT_CASES)
def test_default_matches_reference(group: str, flag: str, default: Any) -> None:
    config = load()
    assert field_of(flag) in config[group], f"{flag} is not in group {group}"
    value = config[group][field_of(flag)]
    assert value == default
    assert type(value) is type(default) or {type(value), type(default)} == {int, float}


def test_no_undocumented_flags() -> None:
    config = load()
    documented: dict[str, set[str]] = {}
    for group, flag, _ in all_flags():
        documented.setdefault(group, set()).add(field_of(flag))
    assert {group: set(fields) for group, fields in config.items()} == documented


def test_instance_id_is_a_fresh_uuid4_each_time() -> None:
    first = load()["mp"]["instance_id"]
    second = load()["mp"]["instance_id"]
    for value in (first, second):
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert str(parsed) == value
    assert first != second


def test_instance_id_given() -> None:
    assert load(instance_id="node-a")["mp"]["instance_id"] == "node-a"


@pytest.mark.parametrize(
    ("values", "gpu", "cpu"),
    [
        ({}, 1, 1),
        ({"max_workers": 4}, 4, 4),
        ({"max_workers": 4, "max_gpu_workers": 2}, 2, 4),
        ({"max_workers": 4, "max_cpu_workers": 3}, 4, 3),
        ({"max_gpu_workers": 2, "max_cpu_workers": 3}, 2, 3),
    ],
)
def test_pool_sizes_inherit_max_workers(values: dict[str, int], gpu: int, cpu: int) -> None:
    mp = load(**values)["mp"]
    assert (mp["max_gpu_workers"], mp["max_cpu_workers"]) == (gpu, cpu)


@pytest.mark.parametrize(
    ("values", "expected"), [({}, None), ({"shm_name": ""}, ""), ({"shm_name": "foo"}, "foo")]
)
def test_shm_name_unset_empty_or_named(values: dict[str, str], expected: str | None) -> None:
    assert load(**values)["mp"]["shm_name"] == expected


@pytest.mark.parametrize("flag", ["--l1-size-gb", "--eviction-policy"])
def test_required_flags(flag: str) -> None:
    values = {k: v for k, v in REQUIRED_VALUES.items() if k != field_of(flag)}
    error = config_error(**values)
    assert error.flag == flag
    assert env_of(flag) in str(error)


# --- 2. values that pass at the edges of a rule ----------------------------------


@pytest.mark.parametrize(
    ("values", "group", "field", "expected"),
    [
        ({"worker_reap_timeout_seconds": "0"}, "mp", "worker_reap_timeout_seconds", 0.0),
        ({"worker_reap_timeout_seconds": "30"}, "mp", "worker_reap_timeout_seconds", 30.0),
        (
            {"worker_reap_timeout_seconds": "60", "worker_registration_grace_seconds": "60"},
            "mp",
            "worker_registration_grace_seconds",
            60.0,
        ),
        ({"eviction_trigger_watermark": "0"}, "eviction", "eviction_trigger_watermark", 0.0),
        ({"eviction_trigger_watermark": "1"}, "eviction", "eviction_trigger_watermark", 1.0),
        ({"eviction_ratio": "0"}, "eviction", "eviction_ratio", 0.0),
        ({"eviction_ratio": "1"}, "eviction", "eviction_ratio", 1.0),
        ({"metrics_sample_rate": "1"}, "observability", "metrics_sample_rate", 1.0),
        ({"l1_align_bytes": "1"}, "l1", "l1_align_bytes", 1),
        ({"l1_align_bytes": "8192"}, "l1", "l1_align_bytes", 8192),
        ({"port": "1"}, "mp", "port", 1),
        ({"port": "65535"}, "mp", "port", 65535),
        ({"http_port": "65535"}, "http", "http_port", 65535),
        ({"prometheus_port": "1"}, "observability", "prometheus_port", 1),
        ({"hash_algorithm": "builtin"}, "mp", "hash_algorithm", "builtin"),
        ({"hash_algorithm": "sha256_cbor"}, "mp", "hash_algorithm", "sha256_cbor"),
        (
            {"supported_transfer_mode": "lmcache_driven"},
            "mp",
            "supported_transfer_mode",
            "lmcache_driven",
        ),
        (
            {"supported_transfer_mode": "engine_driven"},
            "mp",
            "supported_transfer_mode",
            "engine_driven",
        ),
        (
            {"engine_type": "blend", "supported_transfer_mode": "lmcache_driven"},
            "mp",
            "engine_type",
            "blend",
        ),
        ({"engine_type": "blend_legacy"}, "mp", "engine_type", "blend_legacy"),
        (
            {
                "runtime_plugin_config": '{"plugin.frontend.heartbeat_url": "http://localhost:5000/hb"}'
            },
            "mp",
            "runtime_plugin_config",
            {"plugin.frontend.heartbeat_url": "http://localhost:5000/hb"},
        ),
        (
            {"script_allowed_imports": ["numpy", "os.path"]},
            "mp",
            "script_allowed_imports",
            ["numpy", "os.path"],
        ),
        ({"runtime_plugin_locations": ["a", "b"]}, "mp", "runtime_plugin_locations", ["a", "b"]),
        (
            {"enable_tracing": True, "otlp_endpoint": "http://localhost:4317"},
            "observability",
            "enable_tracing",
            True,
        ),
        (
            {"l1_devdax_path": "/dev/dax0.0", "l1_use_lazy": False, "shm_name": ""},
            "l1",
            "l1_devdax_path",
            "/dev/dax0.0",
        ),
        ({"enable_segmented_prefix": True}, "mp", "enable_segmented_prefix", True),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_accepted_values(values: dict[str, Any], group: str, field: str, expected: Any) -> None:
    assert load(**values)[group][field] == expected


def test_adapters_keep_their_order() -> None:
    first = {**MOCK_ADAPTER, "seed": 1}
    second = {"type": "fs", "base_path": "/tmp/l2"}
    loaded = load(l2_adapter=[json.dumps(first), json.dumps(second)])["l2_adapters"]["l2_adapter"]
    assert loaded == [first, second]


# --- 2b. values the rules reject (the CLI tests check the exit code and message) --


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"worker_reap_timeout_seconds": "10"}, "--worker-reap-timeout-seconds"),
        (
            {"worker_reap_timeout_seconds": "120", "worker_registration_grace_seconds": "119"},
            "--worker-registration-grace-seconds",
        ),
        ({"eviction_ratio": "1.01"}, "--eviction-ratio"),
        ({"eviction_trigger_watermark": "-0.1"}, "--eviction-trigger-watermark"),
        ({"metrics_sample_rate": "0"}, "--metrics-sample-rate"),
        ({"l1_align_bytes": "3000"}, "--l1-align-bytes"),
        ({"hash_algorithm": "md5"}, "--hash-algorithm"),
        ({"port": "65536"}, "--port"),
        ({"enable_tracing": True}, "--enable-tracing"),
        ({"script_allowed_imports": ["not-a-module"]}, "--script-allowed-imports"),
        ({"runtime_plugin_config": "[1, 2]"}, "--runtime-plugin-config"),
        ({"l2_adapter": ['{"backend": "POSIX"}']}, "--l2-adapter"),
        ({"l1_devdax_path": "/dev/dax0.0", "shm_name": ""}, "--l1-devdax-path"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_rejected_values_name_the_flag(values: dict[str, Any], flag: str) -> None:
    error = config_error(**REQUIRED_VALUES, **values)
    assert flag in str(error)


# --- 3. environment variables -----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "group", "field", "expected"),
    [
        # MP Server
        ({"LMCACHE_PORT": "6000"}, "mp", "port", 6000),
        ({"LMCACHE_HOST": "0.0.0.0"}, "mp", "host", "0.0.0.0"),
        ({"LMCACHE_INSTANCE_ID": "node-7"}, "mp", "instance_id", "node-7"),
        ({"LMCACHE_MAX_WORKERS": "3"}, "mp", "max_gpu_workers", 3),
        ({"LMCACHE_MAX_WORKERS": "3"}, "mp", "max_cpu_workers", 3),
        ({"LMCACHE_HASH_ALGORITHM": "sha256_cbor"}, "mp", "hash_algorithm", "sha256_cbor"),
        (
            {"LMCACHE_SCRIPT_ALLOWED_IMPORTS": "numpy pandas"},
            "mp",
            "script_allowed_imports",
            ["numpy", "pandas"],
        ),
        ({"LMCACHE_RUNTIME_PLUGIN_LOCATIONS": "a b"}, "mp", "runtime_plugin_locations", ["a", "b"]),
        (
            {"LMCACHE_RUNTIME_PLUGIN_CONFIG": '{"k": "v"}'},
            "mp",
            "runtime_plugin_config",
            {"k": "v"},
        ),
        ({"LMCACHE_SHM_NAME": ""}, "mp", "shm_name", ""),
        ({"LMCACHE_SHM_NAME": "seg"}, "mp", "shm_name", "seg"),
        ({"LMCACHE_WORKER_REAP_TIMEOUT_SECONDS": "0"}, "mp", "worker_reap_timeout_seconds", 0.0),
        ({"LMCACHE_ENABLE_SEGMENTED_PREFIX": "true"}, "mp", "enable_segmented_prefix", True),
        # Lookup Hash Logging
        (
            {"LMCACHE_LOOKUP_HASH_LOG_DIR": "/tmp/hashes"},
            "lookup_hash_log",
            "lookup_hash_log_dir",
            "/tmp/hashes",
        ),
        (
            {"LMCACHE_LOOKUP_HASH_LOG_MAX_FILES": "5"},
            "lookup_hash_log",
            "lookup_hash_log_max_files",
            5,
        ),
        # HTTP Frontend
        ({"LMCACHE_HTTP_PORT": "9000"}, "http", "http_port", 9000),
        ({"LMCACHE_HTTP_HOST": "127.0.0.1"}, "http", "http_host", "127.0.0.1"),
        # L1 Memory Manager
        ({"LMCACHE_L1_SIZE_GB": "7"}, "l1", "l1_size_gb", 7.0),
        ({"LMCACHE_L1_USE_LAZY": "false"}, "l1", "l1_use_lazy", False),
        ({"LMCACHE_L1_ALIGN_BYTES": "8192"}, "l1", "l1_align_bytes", 8192),
        # GDS L1 Tier
        ({"LMCACHE_GDS_L1_PATH": "/nvme"}, "gds_l1", "gds_l1_path", "/nvme"),
        ({"LMCACHE_GDS_L1_USE_DIRECT_IO": "0"}, "gds_l1", "gds_l1_use_direct_io", False),
        # L1 Manager TTLs
        ({"LMCACHE_L1_WRITE_TTL_SECONDS": "60"}, "l1_ttl", "l1_write_ttl_seconds", 60.0),
        ({"LMCACHE_L1_READ_TTL_SECONDS": "30"}, "l1_ttl", "l1_read_ttl_seconds", 30.0),
        # Eviction Policy
        ({"LMCACHE_EVICTION_POLICY": "noop"}, "eviction", "eviction_policy", "noop"),
        ({"LMCACHE_EVICTION_RATIO": "0.5"}, "eviction", "eviction_ratio", 0.5),
        (
            {"LMCACHE_EVICTION_TRIGGER_WATERMARK": "0.95"},
            "eviction",
            "eviction_trigger_watermark",
            0.95,
        ),
        # L2 Policies
        ({"LMCACHE_L2_STORE_POLICY": "skip_l1"}, "l2_policies", "l2_store_policy", "skip_l1"),
        ({"LMCACHE_L2_PREFETCH_POLICY": "retain"}, "l2_policies", "l2_prefetch_policy", "retain"),
        (
            {"LMCACHE_L2_PREFETCH_MAX_IN_FLIGHT": "16"},
            "l2_policies",
            "l2_prefetch_max_in_flight",
            16,
        ),
        (
            {"LMCACHE_PERIODIC_NOTIFIER_INTERVAL_MS": "20"},
            "l2_policies",
            "periodic_notifier_interval_ms",
            20,
        ),
        # L2 Adapters: one JSON object, or a JSON list of them
        (
            {"LMCACHE_L2_ADAPTER": '{"type": "mock", "max_size_gb": 1}'},
            "l2_adapters",
            "l2_adapter",
            [{"type": "mock", "max_size_gb": 1}],
        ),
        (
            {"LMCACHE_L2_ADAPTER": '[{"type": "mock"}, {"type": "fs"}]'},
            "l2_adapters",
            "l2_adapter",
            [{"type": "mock"}, {"type": "fs"}],
        ),
        # Observability
        ({"LMCACHE_DISABLE_METRICS": "true"}, "observability", "disable_metrics", True),
        ({"LMCACHE_DISABLE_OBSERVABILITY": "1"}, "observability", "disable_observability", True),
        ({"LMCACHE_PROMETHEUS_PORT": "9100"}, "observability", "prometheus_port", 9100),
        ({"LMCACHE_METRICS_SAMPLE_RATE": "0.5"}, "observability", "metrics_sample_rate", 0.5),
        ({"LMCACHE_EVENT_BUS_QUEUE_SIZE": "50"}, "observability", "event_bus_queue_size", 50),
        (
            {"LMCACHE_ENABLE_TRACING": "true", "LMCACHE_OTLP_ENDPOINT": "http://collector:4317"},
            "observability",
            "otlp_endpoint",
            "http://collector:4317",
        ),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_env_override(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], group: str, field: str, expected: Any
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    values = {k: v for k, v in REQUIRED_VALUES.items() if env_of("--" + k) not in env}
    assert load_config(values).public_dict()[group][field] == expected


def test_env_makes_required_flags_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_L1_SIZE_GB", "12")
    monkeypatch.setenv("LMCACHE_EVICTION_POLICY", "IsolatedLRU")
    config = load_config({}).public_dict()
    assert config["l1"]["l1_size_gb"] == 12
    assert config["eviction"]["eviction_policy"] == "IsolatedLRU"


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("lmcache_port", "6001")
    assert load()["mp"]["port"] == 6001


@pytest.mark.parametrize(
    ("env", "values", "group", "field", "expected"),
    [
        ({"LMCACHE_PORT": "6000"}, {"port": "7000"}, "mp", "port", 7000),
        ({"LMCACHE_PORT": "not-a-port"}, {"port": "7000"}, "mp", "port", 7000),
        ({"LMCACHE_L1_SIZE_GB": "7"}, {"l1_size_gb": "3"}, "l1", "l1_size_gb", 3.0),
        ({"LMCACHE_L1_USE_LAZY": "false"}, {"l1_use_lazy": True}, "l1", "l1_use_lazy", True),
        ({"LMCACHE_SHM_NAME": "seg"}, {"shm_name": ""}, "mp", "shm_name", ""),
        (
            {"LMCACHE_SCRIPT_ALLOWED_IMPORTS": "numpy"},
            {"script_allowed_imports": ["pandas"]},
            "mp",
            "script_allowed_imports",
            ["pandas"],
        ),
        (
            {"LMCACHE_L2_ADAPTER": '{"type": "fs"}'},
            {"l2_adapter": ['{"type": "mock"}']},
            "l2_adapters",
            "l2_adapter",
            [{"type": "mock"}],
        ),
        ({"LMCACHE_MAX_WORKERS": "8"}, {"max_workers": "2"}, "mp", "max_gpu_workers", 2),
        ({"LMCACHE_MAX_GPU_WORKERS": "5"}, {"max_workers": "2"}, "mp", "max_gpu_workers", 5),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_flag_beats_env(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    values: dict[str, Any],
    group: str,
    field: str,
    expected: Any,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load(**values)[group][field] == expected


@pytest.mark.parametrize(
    ("env", "flag"),
    [
        ({"LMCACHE_L1_SIZE_GB": "abc"}, "--l1-size-gb"),
        ({"LMCACHE_PORT": "70000"}, "--port"),
        ({"LMCACHE_HTTP_PORT": "x"}, "--http-port"),
        ({"LMCACHE_L1_USE_LAZY": "maybe"}, "--l1-use-lazy"),
        ({"LMCACHE_HASH_ALGORITHM": "md5"}, "--hash-algorithm"),
        ({"LMCACHE_EVICTION_RATIO": "2"}, "--eviction-ratio"),
        ({"LMCACHE_SCRIPT_ALLOWED_IMPORTS": "numpy not-a-module"}, "--script-allowed-imports"),
        ({"LMCACHE_RUNTIME_PLUGIN_CONFIG": "{oops"}, "--runtime-plugin-config"),
        ({"LMCACHE_L2_ADAPTER": "{oops"}, "--l2-adapter"),
        ({"LMCACHE_L2_ADAPTER": '{"pool_size": 4}'}, "--l2-adapter"),
        ({"LMCACHE_METRICS_SAMPLE_RATE": "0"}, "--metrics-sample-rate"),
        ({"LMCACHE_WORKER_REAP_TIMEOUT_SECONDS": "10"}, "--worker-reap-timeout-seconds"),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_invalid_env_names_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], flag: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    values = {k: v for k, v in REQUIRED_VALUES.items() if env_of("--" + k) not in env}
    error = config_error(**values)
    assert error.flag is not None
    assert error.flag.startswith(flag)
    assert env_of(flag) in str(error)


def test_unrelated_lmcache_env_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_NOT_A_FLAG", "whatever")
    monkeypatch.setenv("LMCACHE_LOG_LEVEL", "DEBUG")
    assert load()["mp"]["port"] == 5555


@pytest.mark.parametrize(
    ("env", "values", "flag"),
    [
        ({"LMCACHE_ENABLE_TRACING": "1"}, {}, "--enable-tracing"),
        ({"LMCACHE_WORKER_REAP_TIMEOUT_SECONDS": "4000"}, {}, "--worker-reap-timeout-seconds"),
        ({"LMCACHE_L1_DEVDAX_PATH": "/dev/dax0.0"}, {"l1_use_lazy": False}, "--l1-devdax-path"),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) and v else None,
)
def test_cross_flag_error_from_env_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], values: dict[str, Any], flag: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    message = str(config_error(**REQUIRED_VALUES, **values))
    assert flag in message
    for name in env:
        assert name in message
