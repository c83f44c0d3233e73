"""What the stack imports on first use is preloaded before the sandbox hides its files:
every netstack import made inside a function of the runtime's modules is listed in
host.runtime.LAZY_MODULES (the e2e proof: tests/e2e/test_sandbox.py); logging waits
for the first record (netstack/log.py), after the ready byte."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest

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


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_start_path_leaves_logging_unimported() -> None:
    """Nothing before the ready byte logs, so logging (~5 ms of a launch with the
    modules it imports) waits for the first record (netstack/log.py)."""
    done = _python(
        "import sys, netstack.cli.main, netstack.host.runtime\n"
        "print(sorted({'logging', 'traceback', 'threading'} & set(sys.modules)))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_record_imports_logging_and_applies_configure() -> None:
    done = _python(
        "import sys\n"
        "from netstack import log\n"
        "log.configure(log.INFO, 'fmt %(name)s: %(message)s')\n"
        "x = log.get_logger('netstack.x')\n"
        "x.debug('below the floor %d', 1)\n"
        "assert not x.isEnabledFor(log.DEBUG)\n"
        "assert 'logging' not in sys.modules, 'a dropped record imported logging'\n"
        "x.info('kept %d', 2)\n"
        "assert 'logging' in sys.modules\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    x.exception('failed %s', 'here')\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "fmt netstack.x: kept 2"
    assert lines[1] == "fmt netstack.x: failed here"
    assert "ValueError: boom" in done.stderr
    assert "below the floor" not in done.stderr


def test_an_eager_configure_applies_at_once() -> None:
    """netstackd's: a library's record through logging itself is formatted too."""
    done = _python(
        "import logging\n"
        "from netstack import log\n"
        "log.configure(log.INFO, 'd: %(message)s', eager=True)\n"
        "logging.getLogger('asyncio').warning('from a library')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "d: from a library\n"


def test_records_reach_logging_and_its_levels(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unconfigured (tests, library use) every record reaches logging, which filters;
    a configured floor drops what is below it before logging sees it."""
    from netstack import log

    x = log.get_logger("netstack.test_startup")
    with caplog.at_level(logging.DEBUG, logger="netstack.test_startup"):
        x.debug("d %d", 1)
        x.warning("w %s", "2")
        monkeypatch.setattr(log, "_floor", log.INFO)
        x.debug("dropped")
        x.info("i")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "d 1"),
        (logging.WARNING, "w 2"),
        (logging.INFO, "i"),
    ]
    assert caplog.records[0].name == "netstack.test_startup"
    assert caplog.records[0].filename == "test_startup.py"  # stacklevel: the caller's line


def test_the_stack_configures_logging_at_once_only_with_a_directory() -> None:
    """With --directory the stack runs asyncio, whose records go through logging
    itself: they get the stack's format; without, logging stays unimported."""
    done = _python(
        "import sys\n"
        "from netstack.cli.main import configure_logging\n"
        "configure_logging(False)\n"
        "assert 'logging' not in sys.modules\n"
        "configure_logging(True)\n"
        "import logging\n"
        "logging.getLogger('asyncio').warning('from asyncio')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "asyncio: from asyncio\n"
