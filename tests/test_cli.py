"""The command line: help, version, validation messages, argument permutations, and
ready-fd / exit-fd behaviour."""

from __future__ import annotations

import os
import subprocess

import pytest

from netstack.cli import args
from tests.netns import NETSTACK, World


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NETSTACK, *argv], capture_output=True, text=True, timeout=30)


HELP_NAMES = (
    "--configure",
    "--exit-fd",
    "--ready-fd",
    "--mtu",
    "--enable-ipv6",
    "--api-socket",
    "--cidr",
    "--disable-host-loopback",
    "--netns-type",
    "--userns-path",
    "--enable-sandbox",
    "--enable-seccomp",
    "--outbound-addr",
    "--outbound-addr6",
    "--disable-dns",
    "--macaddress",
    "--directory",
    "--directory-label",
    "--directory-wait",
)


def test_help_goes_to_stdout_with_every_option_name_one_line_each() -> None:
    r = run("--help")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    for name in HELP_NAMES:
        assert sum(1 for line in lines if f"{name}=" in line or f"{name} " in line) == 1, name
    # what rootlesskit, podman and containerd-rootless.sh grep for
    assert any(word == "--netns-type" for word in r.stdout.replace("=", " ").split())


def test_every_advertised_option_is_accepted() -> None:
    for name in HELP_NAMES:
        o = args.LONG
        assert name[2:] in o or name[2:] + "=" in o, name


def test_version_keeps_the_config_version_line() -> None:
    r = run("-v")
    assert r.returncode == 0
    assert "SLIRP_CONFIG_VERSION_MAX: 4" in r.stdout.splitlines()


@pytest.mark.parametrize(
    "argv,message,usage",
    [
        (["--bogus", "1", "tap0"], "netstack: unrecognized option '--bogus'", True),
        (["-m", "70000", "1", "tap0"], "MTU must be a positive integer (< 65522)", True),
        (["--mtu=0", "1", "tap0"], "MTU must be a positive integer (< 65522)", True),
        (["-m", "60", "1", "tap0"], "MTU must be at least 68", True),
        (["-r", "x", "1", "tap0"], "ready-fd must be a non-negative integer", True),
        (["-e", "-3", "1", "tap0"], "exit-fd must be a non-negative integer", True),
        (["--cidr", "foo", "1", "tap0"], "invalid CIDR: foo", False),
        (["--cidr", "10.0.2.0/26", "1", "tap0"], "prefix length needs to be 1-25", False),
        (
            ["--cidr=10.0.2.100/24", "1", "tap0"],
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24",
            False,
        ),
        (["0", "tap0"], "PID must be a positive integer", True),
        (
            ["--netns-type=path", "/nonexistent", "tap0"],
            "existing path expected when --netns-type=path",
            True,
        ),
        (["--userns-path=/nonexistent", "1", "tap0"], "userns path doesn't exist", True),
        (["1"], "PID|PATH and TAPNAME are required", True),
        (
            ["--outbound-addr=1.2.3.4.5", "1", "tap0"],
            "outbound-addr has to be valid ipv4 address or interface name.",
            True,
        ),
        (
            ["--outbound-addr6=fe80:::1", "1", "tap0"],
            "outbound-addr6 has to be valid ipv6 address or interface name.",
            True,
        ),
        (
            ["--macaddress=0e:d4:18:d9:38:fb", "1", "tap0"],
            "--macaddr cannot be specified when --configure or -c is not specified",
            True,
        ),
        (["-c", "--macaddress=zz:d4:18:d9:38:fb", "1", "tap0"], "invalid MAC address", True),
        (["--netns-type=tapfd"], "FD is required", True),
        (["--directory=/d", "--directory-label=zone", "1", "tap0"], "must be K=V", True),
        (["--directory=/d", "--directory-label==x", "1", "tap0"], "must be K=V", True),
        (["--directory=/d", "--directory-wait=0", "1", "tap0"], "directory-wait must be", True),
        (["--directory=/d", "--directory-wait=-1", "1", "tap0"], "directory-wait must be", True),
        (["--directory-label=a=b", "1", "tap0"], "need --directory", True),
        (["--directory-wait=3", "1", "tap0"], "need --directory", True),
    ],
)
def test_bad_arguments_are_refused_with_slirp4netns_messages(
    argv: list[str], message: str, usage: bool
) -> None:
    r = run(*argv)
    assert r.returncode == 1
    assert message in r.stderr
    assert ("Usage:" in r.stdout) == usage


def test_directory_options() -> None:
    o = args.parse(["1", "tap0"])
    assert (o.directory, o.directory_labels, o.directory_wait) == (None, {}, 10.0)
    o = args.parse(
        [
            "--directory",
            "/run/user/1000/netstackd/api.sock",
            "--directory-label=zone=blue",
            "--directory-label",
            "app.kubernetes.io/name=web",
            "--directory-wait=2.5",
            "1",
            "tap0",
        ]
    )
    assert o.directory == "/run/user/1000/netstackd/api.sock"
    assert o.directory_labels == {"zone": "blue", "app.kubernetes.io/name": "web"}
    assert o.directory_wait == 2.5


def test_gnu_parsing_permutes_bundles_and_takes_prefixes() -> None:
    o = args.parse(
        ["-c", "123", "--mtu", "9000", "tap9", "--disable-host", "-r3", "--cid=10.0.5.0/24"]
    )
    assert (o.target, o.tapname, o.mtu, o.ready_fd) == ("123", "tap9", 9000, 3)
    assert o.configure and o.disable_host_loopback and str(o.cidr) == "10.0.5.0/24"
    o = args.parse(["-ce", "7", "5", "tap0"])
    assert o.configure and o.exit_fd == 7


def test_deprecated_aliases_warn_and_work(capsys: pytest.CaptureFixture[str]) -> None:
    o = args.parse(["--no-host-loopback", "--create-sandbox", "1", "tap0"])
    assert o.disable_host_loopback and o.enable_sandbox
    assert capsys.readouterr().out.splitlines() == [
        "WARNING: --no-host-loopback is deprecated, use --disable-host-loopback",
        "WARNING: --create-sandbox is deprecated, use --enable-sandbox",
    ]
    o = args.parse(["--disable-host-loopback", "--enable-sandbox", "1", "tap0"])
    assert o.disable_host_loopback and o.enable_sandbox
    assert capsys.readouterr().out == ""  # the current names say nothing


def test_target_process_that_does_not_exist_fails_before_ready() -> None:
    r, w = os.pipe()
    p = subprocess.run(
        [NETSTACK, "-r", str(w), "999999", "tap0"],
        pass_fds=(w,),
        capture_output=True,
        text=True,
        timeout=30,
    )
    os.close(w)
    assert p.returncode == 1
    assert os.read(r, 16) == b""  # the ready pipe closes without the byte
    os.close(r)


def test_exit_fd_hangup_stops_netstack(world: World) -> None:
    r, w = os.pipe()
    world.start_netstack("-e", str(r), extra_fds=(r,))
    os.close(r)
    assert world.netstack is not None and world.netstack.poll() is None
    os.write(w, b"data does not stop it")
    with pytest.raises(subprocess.TimeoutExpired):
        world.netstack.wait(0.5)
    os.close(w)
    assert world.netstack.wait(10) == 0
    assert "exitfd event" in world.log()


def test_exit_fd_that_is_not_open_exits_at_once(world: World) -> None:
    world.start_netstack("-e", "77")
    assert world.netstack is not None and world.netstack.wait(10) == 0


def test_cidr_moves_every_address(world: World) -> None:
    world.start_netstack("--cidr=10.0.135.128/25")
    r = world.in_guest("ip", "-4", "addr", "show", "tap0")
    assert "10.0.135.228/25 brd 10.0.135.255" in r.stdout
    assert world.in_guest("ping", "-c", "1", "-W", "2", "10.0.135.130").returncode == 0


def test_macaddress_and_mtu_are_applied(world: World) -> None:
    world.start_netstack("--macaddress=0e:d4:18:d9:38:fb", "--mtu=65520")
    r = world.in_guest("ip", "link", "show", "tap0")
    assert "ether 0e:d4:18:d9:38:fb" in r.stdout and "mtu 65520" in r.stdout


def test_enable_ipv6_prints_slirp4netns_warning_and_keeps_ipv4(world: World) -> None:
    world.start_netstack()
    assert "IPv6 is experimental" not in world.log()
    world.stop_netstack()
    world.start_netstack("-6")
    assert "WARNING: Support for IPv6 is experimental" in world.log()
    assert world.in_guest("ping", "-c", "1", "-W", "2", "10.0.2.2").returncode == 0


def test_api_socket_path_too_long_fails_before_ready(world: World) -> None:
    with pytest.raises(AssertionError, match="ready-fd gave b''|exited 1"):
        world.start_netstack("--api-socket", "/tmp/" + "x" * 120)
    assert world.netstack is not None and world.netstack.wait(5) == 1
    assert "API socket path too long" in world.log()


def test_the_namespace_entering_child_is_not_dumpable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before it joins the container's namespaces, the child makes itself non-dumpable:
    the container's root cannot ptrace it from inside its user namespace."""
    import ctypes

    from netstack.cli import nsenter

    if os.geteuid() != 0:
        pytest.skip("setns needs root")
    r, w = os.pipe()

    def report(tapname: str, want_vnet: bool) -> tuple[int, bool]:
        libc = ctypes.CDLL(None, use_errno=True)
        os.write(w, b"%d" % libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE, after setns
        raise OSError("stop here")

    monkeypatch.setattr(nsenter, "open_tap", report)
    with pytest.raises(RuntimeError):
        nsenter.open_tap_in_namespace(nsenter.Target("/proc/self/ns/net", None), "x", None)
    os.close(w)
    assert os.read(r, 16) == b"0"
    os.close(r)
