"""What the stack imports on first use is preloaded before the sandbox hides its files:
every netstack import made inside a function of the runtime's modules is listed in
host.runtime.LAZY_MODULES (the e2e proof: tests/e2e/test_sandbox.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import netstack
from netstack.host.runtime import LAZY_ASYNCIO_MODULES, LAZY_MODULES

PACKAGE = Path(netstack.__file__).resolve().parent
# imported in a function, but before the sandbox (cli/main.py) or only by a developer
# knob; not on the running stack's path
BEFORE_THE_SANDBOX = {"netstack._fastc"}
# the modules whose functions run after the sandbox: the stack and what it serves
AFTER_THE_SANDBOX = ("host", "stack", "tcp", "udp", "dns", "dhcp", "icmp", "api", "forward")


def imports_in_functions(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    names = [inner.module] + [f"{inner.module}.{a.name}" for a in inner.names]
                    found.update(n for n in names if n.startswith("netstack"))
                elif isinstance(inner, ast.Import):
                    found.update(a.name for a in inner.names if a.name.startswith("netstack"))
    return found


def test_lazy_imports_of_the_running_stack_are_preloaded() -> None:
    lazy = set()
    for sub in AFTER_THE_SANDBOX:
        for path in (PACKAGE / sub).rglob("*.py"):
            lazy |= imports_in_functions(path)
    # `from netstack.api import commands` names a module by its parent and its name
    modules = {m for m in lazy if _is_module(m)} - BEFORE_THE_SANDBOX
    # a package comes with the modules preloaded from it
    listed = set(LAZY_MODULES + LAZY_ASYNCIO_MODULES)
    packages = {m.rsplit(".", 1)[0] for m in listed}
    assert modules - packages <= listed, modules - packages - listed


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def test_the_check_sees_the_runtime_lazy_imports() -> None:
    found = imports_in_functions(PACKAGE / "host" / "runtime.py")
    assert {"netstack.api.server", "netstack.host.listeners"} <= found
