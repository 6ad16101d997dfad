"""The restricted interpreter behind ``POST /run_script``; runs as its own process.

The server starts ``python -I script_sandbox.py`` for every script, writes one
JSON document to its stdin and reads one JSON document from its stdout::

    in:  {"script": str, "allowed_imports": [str], "status": {...},
          "max_output_bytes": int, "memory_bytes": int, "cpu_seconds": int}
    out: {"ok": true, "text": str}
         {"ok": false, "kind": "rejected" | "error" | "output_limit", "error": str}

Layers, each of which alone would not be enough:

1. The script is parsed and checked (:func:`check_script`): no name or attribute
   that starts with an underscore, no frame, code, generator or traceback
   internals, no ``format``/``format_map`` (format strings look attributes up by
   name), no class definitions, ``match``, generators, ``async`` or attribute
   assignment.
2. It is rewritten (:class:`_Rewriter`): every attribute read goes through
   :func:`guarded_getattr`, which refuses the names above and any value that is a
   module, and every ``import`` through :func:`_SandboxImporter`, which knows
   only the allowed modules (not their submodules) and hands out opaque
   :class:`ModuleProxy` objects.
3. It runs with a small set of builtins: no ``open``, ``__import__``, ``eval``,
   ``exec``, ``compile``, ``getattr``, ``type``, ``globals``, ``vars``,
   ``input``, ``breakpoint``...
4. The process itself is bounded before the script runs: no new file
   descriptors (so no files, sockets or pipes), no file writes, an address-space
   and CPU-time limit, no child processes (where the kernel enforces it for the
   user), an empty environment; the server kills it at its wall-clock limit and
   reads at most a bounded amount of its output.

This file imports nothing outside the standard library, so it runs without the
server's packages; the server imports it too, to reject bad scripts early.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

MAX_SCRIPT_CHARS = 64 * 1024
"""Longer scripts are refused (the checker and compiler work on the whole text)."""

DENIED_MODULES = frozenset(
    {
        "_thread",
        "asyncio",
        "builtins",
        "code",
        "codeop",
        "copyreg",
        "ctypes",
        "dbm",
        "fcntl",
        "ftplib",
        "gc",
        "glob",
        "http",
        "importlib",
        "inspect",
        "io",
        "marshal",
        "mmap",
        "multiprocessing",
        "operator",
        "os",
        "pathlib",
        "pickle",
        "pkgutil",
        "posix",
        "pty",
        "resource",
        "runpy",
        "select",
        "selectors",
        "shelve",
        "shutil",
        "signal",
        "site",
        "smtplib",
        "socket",
        "sqlite3",
        "ssl",
        "string",
        "subprocess",
        "sys",
        "sysconfig",
        "tempfile",
        "threading",
        "types",
        "urllib",
        "webbrowser",
        "zipimport",
    }
)
"""Modules no script may import even when listed: each reaches the filesystem,
processes, the network or the interpreter's internals directly, or looks
attributes up by name (``operator.attrgetter``, ``string.Formatter``), which
would bypass the attribute guard. The check is on the top-level package."""

FORBIDDEN_ATTRIBUTES = frozenset(
    {
        # frames, code, generators, coroutines, tracebacks: the ways back to globals
        "f_back",
        "f_builtins",
        "f_code",
        "f_globals",
        "f_locals",
        "f_trace",
        "gi_code",
        "gi_frame",
        "gi_yieldfrom",
        "cr_await",
        "cr_code",
        "cr_frame",
        "ag_await",
        "ag_code",
        "ag_frame",
        "tb_frame",
        "tb_next",
        "co_code",
        "co_consts",
        "func_globals",
        "func_code",
        # format strings resolve "{0.attr}" without going through the guard
        "format",
        "format_map",
        "vformat",
        "get_field",
        # class hierarchies lead to object and every loaded class
        "mro",
    }
)

SAFE_BUILTINS: tuple[str, ...] = (
    "abs",
    "all",
    "any",
    "ascii",
    "bin",
    "bool",
    "bytes",
    "callable",
    "chr",
    "complex",
    "dict",
    "divmod",
    "enumerate",
    "filter",
    "float",
    "frozenset",
    "hash",
    "hex",
    "int",
    "isinstance",
    "iter",
    "len",
    "list",
    "map",
    "max",
    "min",
    "next",
    "oct",
    "ord",
    "pow",
    "range",
    "repr",
    "reversed",
    "round",
    "set",
    "slice",
    "sorted",
    "str",
    "sum",
    "tuple",
    "zip",
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "Exception",
    "ImportError",
    "IndexError",
    "KeyError",
    "LookupError",
    "NameError",
    "OverflowError",
    "RuntimeError",
    "StopIteration",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
)
"""The builtins a script sees (plus a captured ``print``); nothing here opens
files, imports, evaluates code or looks attributes up by name."""

_REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.ClassDef: "class definitions",
    ast.AsyncFunctionDef: "async functions",
    ast.Await: "await",
    ast.AsyncFor: "async for",
    ast.AsyncWith: "async with",
    ast.Yield: "generator functions (yield)",
    ast.YieldFrom: "generator functions (yield from)",
    ast.Match: "match statements",
    ast.Global: "global statements",
    ast.Nonlocal: "nonlocal statements",
}

_GETATTR = "_sandbox_getattr_"
_IMPORT = "_sandbox_import_"
_IMPORT_FROM = "_sandbox_import_from_"


class ScriptRejected(ValueError):
    """The script uses something the sandbox does not allow (before it runs)."""


class ModuleProxy:
    """An allowed module as scripts see it.

    Opaque: every attribute read of a script goes through :func:`guarded_getattr`,
    which looks the name up on the real module.
    """

    __slots__ = ("_sandbox_module",)
    _sandbox_module: ModuleType

    def __init__(self, module: ModuleType) -> None:
        object.__setattr__(self, "_sandbox_module", module)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("modules are read-only in scripts")

    def __repr__(self) -> str:
        return f"<module {self._sandbox_module.__name__!r}>"


def _line(node: ast.AST) -> str:
    return f"line {getattr(node, 'lineno', '?')}"


def _check_identifier(name: str | None, node: ast.AST, what: str) -> None:
    if name is not None and name != "_" and name.startswith("_"):
        raise ScriptRejected(
            f"{_line(node)}: {what} {name!r}: names starting with '_' are not allowed"
        )


def _check_attribute(name: str, node: ast.AST) -> None:
    if name.startswith("_"):
        raise ScriptRejected(
            f"{_line(node)}: attribute {name!r}: attributes starting with '_' are not allowed"
        )
    if name in FORBIDDEN_ATTRIBUTES:
        raise ScriptRejected(f"{_line(node)}: attribute {name!r} is not allowed in scripts")


def _check_module_name(name: str, allowed: frozenset[str], node: ast.AST) -> None:
    if name not in allowed:
        listed = ", ".join(sorted(allowed)) or "none"
        raise ScriptRejected(
            f"{_line(node)}: import of {name!r} is not allowed (allowed: {listed}; "
            "see --script-allowed-imports)"
        )


_IDENTIFIERS: dict[type[ast.AST], tuple[str, str]] = {
    ast.Name: ("id", "name"),
    ast.arg: ("arg", "argument"),
    ast.keyword: ("arg", "keyword"),
    ast.FunctionDef: ("name", "function"),
    ast.ExceptHandler: ("name", "name"),
}
"""Node types that bind or name an identifier: (field, what to call it)."""


def _check_import(node: ast.Import, allowed: frozenset[str]) -> None:
    for alias in node.names:
        _check_module_name(alias.name, allowed, node)
        _check_identifier(alias.asname, node, "name")
        if "." in alias.name and alias.asname is None:
            raise ScriptRejected(
                f"{_line(node)}: write 'import {alias.name} as NAME' "
                f"(binding {alias.name.split('.')[0]!r} would need that package)"
            )


def _check_import_from(node: ast.ImportFrom, allowed: frozenset[str]) -> None:
    if node.level:
        raise ScriptRejected(f"{_line(node)}: relative imports are not allowed")
    _check_module_name(node.module or "", allowed, node)
    for alias in node.names:
        if alias.name == "*":
            raise ScriptRejected(f"{_line(node)}: 'import *' is not allowed")
        _check_attribute(alias.name, node)
        _check_identifier(alias.asname, node, "name")


def _check_node(node: ast.AST, allowed: frozenset[str]) -> None:
    rejected = _REJECTED_NODES.get(type(node))
    if rejected is not None:
        raise ScriptRejected(f"{_line(node)}: {rejected} are not allowed in scripts")
    identifier = _IDENTIFIERS.get(type(node))
    if identifier is not None:
        field, what = identifier
        _check_identifier(getattr(node, field), node, what)
    elif isinstance(node, ast.Attribute):
        _check_attribute(node.attr, node)
        if not isinstance(node.ctx, ast.Load):
            raise ScriptRejected(f"{_line(node)}: assigning or deleting attributes is not allowed")
    elif isinstance(node, ast.Import):
        _check_import(node, allowed)
    elif isinstance(node, ast.ImportFrom):
        _check_import_from(node, allowed)


def check_script(source: str, allowed_imports: Iterable[str]) -> ast.Module:
    """Parse and check a script; returns its syntax tree.

    Raises:
        ScriptRejected: A syntax error, or a construct scripts may not use (the
            message names the line).
    """
    if len(source) > MAX_SCRIPT_CHARS:
        raise ScriptRejected(f"the script is longer than {MAX_SCRIPT_CHARS} characters")
    try:
        tree = ast.parse(source, "<script>", "exec")
    except SyntaxError as exc:
        raise ScriptRejected(f"line {exc.lineno}: syntax error: {exc.msg}") from None
    allowed = frozenset(allowed_imports)
    for node in ast.walk(tree):
        _check_node(node, allowed)
    return tree


class _Rewriter(ast.NodeTransformer):
    """Route attribute reads and imports through the guards (after :func:`check_script`)."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        call = ast.Call(
            func=ast.Name(_GETATTR, ast.Load()),
            args=[node.value, ast.Constant(node.attr)],
            keywords=[],
        )
        return ast.copy_location(call, node)

    def visit_Import(self, node: ast.Import) -> list[ast.stmt]:
        return [
            ast.copy_location(
                ast.Assign(
                    targets=[ast.Name(alias.asname or alias.name, ast.Store())],
                    value=ast.Call(
                        func=ast.Name(_IMPORT, ast.Load()),
                        args=[ast.Constant(alias.name)],
                        keywords=[],
                    ),
                ),
                node,
            )
            for alias in node.names
        ]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> list[ast.stmt]:
        return [
            ast.copy_location(
                ast.Assign(
                    targets=[ast.Name(alias.asname or alias.name, ast.Store())],
                    value=ast.Call(
                        func=ast.Name(_IMPORT_FROM, ast.Load()),
                        args=[ast.Constant(node.module), ast.Constant(alias.name)],
                        keywords=[],
                    ),
                ),
                node,
            )
            for alias in node.names
        ]


def guarded_getattr(obj: Any, name: str) -> Any:
    """``obj.name`` for scripts: no private or forbidden names, never a module.

    Raises:
        AttributeError: The name is refused, missing, or names a module.
    """
    if name.startswith("_") or name in FORBIDDEN_ATTRIBUTES:
        raise AttributeError(f"attribute {name!r} is not allowed in scripts")
    if isinstance(obj, ModuleProxy):
        module = object.__getattribute__(obj, "_sandbox_module")
        if not hasattr(module, name):
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        value = getattr(module, name)
        where = f"{module.__name__}.{name}"
    else:
        value = getattr(obj, name)
        where = name
    if isinstance(value, (ModuleType, ModuleProxy)):
        raise AttributeError(
            f"{where} is a module: scripts may only import modules listed in "
            "--script-allowed-imports, by name"
        )
    return value


class _SandboxImporter:
    """The only import machinery a script has: allowed, pre-imported modules."""

    def __init__(self, modules: dict[str, ModuleType]) -> None:
        self._proxies = {name: ModuleProxy(module) for name, module in modules.items()}

    def import_module(self, name: str) -> ModuleProxy:
        try:
            return self._proxies[name]
        except KeyError:
            raise ImportError(f"import of {name!r} is not allowed") from None

    def import_from(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in self._proxies:
            return self._proxies[qualified]
        return guarded_getattr(self.import_module(module), name)


class OutputBuffer:
    """``print`` for scripts: text kept in memory, up to a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[str] = []
        self.size = 0
        self.overflowed = False

    def print(self, *values: Any, sep: str = " ", end: str = "\n") -> None:
        """Like :func:`print`, into the buffer (no ``file`` or ``flush``)."""
        if not isinstance(sep, str) or not isinstance(end, str):
            raise TypeError("sep and end must be strings")
        text = sep.join(str(value) for value in values) + end
        self.size += len(text.encode("utf-8", "surrogatepass"))
        if self.size > self.max_bytes:
            self.overflowed = True
            raise RuntimeError(f"output limit of {self.max_bytes} bytes exceeded")
        self.parts.append(text)

    def text(self) -> str:
        """Everything printed so far."""
        return "".join(self.parts)


def import_problems(names: Iterable[str]) -> list[str]:
    """Why each of ``--script-allowed-imports`` cannot be offered to scripts (none: usable)."""
    problems = []
    for name in names:
        top = name.split(".")[0]
        if top in DENIED_MODULES or top.startswith("_"):
            problems.append(
                f"{name!r} is never importable by scripts: it reaches files, processes, the "
                "network or the interpreter's internals, or looks attributes up by name"
            )
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            problems.append(f"{name!r} cannot be imported in this environment")
    return problems


def build_globals(
    modules: dict[str, ModuleType], status: Callable[[], Any], output: OutputBuffer
) -> dict[str, Any]:
    """The global namespace a script runs in."""
    safe = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
    safe.update({"True": True, "False": False, "None": None, "print": output.print})
    importer = _SandboxImporter(modules)
    return {
        "__builtins__": safe,
        "__name__": "__script__",
        _GETATTR: guarded_getattr,
        _IMPORT: importer.import_module,
        _IMPORT_FROM: importer.import_from,
        "status": status,
    }


def compile_script(source: str, allowed_imports: Iterable[str]) -> Any:
    """Check, rewrite and compile a script (the code object to ``exec``).

    Raises:
        ScriptRejected: See :func:`check_script`.
    """
    tree = _Rewriter().visit(check_script(source, allowed_imports))
    return compile(ast.fix_missing_locations(tree), "<script>", "exec")


def result_text(namespace: dict[str, Any], output: OutputBuffer) -> str:
    """The ``result`` variable as text (JSON for data), or what was printed when unset."""
    if "result" not in namespace:
        return output.text()
    value = namespace["result"]
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def _virtual_memory_bytes() -> int:
    with open("/proc/self/statm") as statm:  # sandbox setup, before any limit
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def confine(memory_bytes: int, cpu_seconds: int) -> None:
    """Limit this process before the script runs (Linux resource limits).

    New file descriptors are refused (no files, sockets or pipes), files may not
    grow, the address space may grow by ``memory_bytes``, CPU time is capped and
    no child process may be created where the kernel applies that to the user
    (it does not for root).
    """
    import resource  # only in the sandbox process; never offered to scripts

    os.closerange(3, 1 << 16)
    address_space = _virtual_memory_bytes() + memory_bytes
    limits = {
        resource.RLIMIT_AS: address_space,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_FSIZE: 0,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NOFILE: 3,
        resource.RLIMIT_NPROC: 0,
    }
    for which, wanted in limits.items():
        hard = resource.getrlimit(which)[1]
        # An unprivileged process cannot raise a hard limit, only lower it.
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(which, (value, value))


def _failure(kind: str, error: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "error": error}


def _execute(code: Any, namespace: dict[str, Any], output: OutputBuffer) -> dict[str, Any]:
    """Run the compiled script; its failures become reply documents, never exceptions."""
    try:
        exec(code, namespace)
    except MemoryError:
        return _failure("error", "the script exceeded its memory limit")
    except BaseException as exc:  # noqa: BLE001 - whatever the script raised is its answer
        if output.overflowed:
            return _failure("output_limit", str(exc))
        return _failure("error", f"{type(exc).__name__}: {exc}{_script_line(exc)}")
    if output.overflowed:
        return _failure("output_limit", "output limit exceeded")
    text = result_text(namespace, output)
    if len(text.encode("utf-8", "surrogatepass")) > output.max_bytes:
        return _failure("output_limit", f"the result is larger than {output.max_bytes} bytes")
    return {"ok": True, "text": text}


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Run one script request (see the module docstring); returns the reply document."""
    allowed = [str(name) for name in request.get("allowed_imports", [])]
    output = OutputBuffer(int(request["max_output_bytes"]))
    try:
        code = compile_script(str(request["script"]), allowed)
    except ScriptRejected as exc:
        return _failure("rejected", str(exc))
    problems = import_problems(allowed)
    if problems:
        return _failure("error", "; ".join(problems))
    modules = {name: importlib.import_module(name) for name in allowed}
    snapshot = json.dumps(request.get("status"))
    namespace = build_globals(modules, lambda: json.loads(snapshot), output)
    confine(int(request["memory_bytes"]), int(request["cpu_seconds"]))
    return _execute(code, namespace, output)


def _script_line(exc: BaseException) -> str:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<script>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line is not None else ""


def main() -> None:
    """Read the request from stdin, write the reply to stdout (the sandbox program)."""
    request = json.loads(sys.stdin.buffer.read())
    try:
        reply = run(request)
    except MemoryError:
        reply = _failure("error", "the script exceeded its memory limit")
    data = json.dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass")
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


if __name__ == "__main__":
    main()
