"""The runtime: one event loop that drives the stack: our own small epoll loop
(host/loop.py), or uvloop when an asyncio part runs (the directory client).

Readers: the TAP fd (frames read in batches), one edge/level-mixed epoll holding every
host socket (so a flow's socket costs no loop registration), the exit fd. One loop
timer follows the stack's earliest deadline. Time handed to the stack is
time.monotonic().

On EpollLoop with the C flow path (unless NETSTACK_CLOOP=0) there is one epoll:
host sockets are registered in the loop's, and the loop waits in C
(csrc/loop.c, `_poll_c`), which serves held flows' frames and host events itself and
returns only what Python must see.
"""

from __future__ import annotations

import errno
import math
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from netstack.dns.fastpath import DnsFastPath
from netstack.forward.rules import ForwardRule, Forwards
from netstack.host import cpaths
from netstack.host.datagrams import HostDatagram
from netstack.host.loop import EpollLoop, EventHandler, Handle
from netstack.host.resolvconf import ResolvConf
from netstack.host.streams import HostTcpStream
from netstack.link.base import FRAME_BUFFER_SIZE, LinkClosed, LinkEndpoint
from netstack.link.tap import TapLink
from netstack.log import get_logger
from netstack.stack.config import DNS6, NetworkConfig
from netstack.stack.dispatch import Stack
from netstack.stack.hostio import DatagramReceiver, HostAddr
from netstack.stack.limits import Limits
from netstack.stack.timers import TimerQueue
from netstack.tcp import fastpath
from netstack.tcp.connection import TcpConnection
from netstack.tcp.fastpath import PYTHON_WORK, FastPath, FlowPathError
from netstack.tcp.interfaces import HostStream
from netstack.udp.fastpath import UdpFastPath

if TYPE_CHECKING:
    import asyncio

    from netstack.api.server import ApiServer
    from netstack.directory.client import DirectoryClient
    from netstack.directory.view import View
    from netstack.host.listeners import TcpForwardListener, UdpForwardListener
    from netstack.stack.vips import DirectorySettings

log = get_logger(__name__)

# Imported on first use, not at start (the ready byte waits for every import before
# it): the API's server and commands, forwarded ports' listeners; and with asyncio
# (--directory): the directory's routes and DNS answers, DNS over TCP for directory
# names and asyncio's own lazy parts. The sandbox
# hides the files they come from, so it imports them before it pivots
# (Runtime.later_modules); tests/test_startup.py checks these lists against the
# imports made inside functions.
LAZY_MODULES = (
    "netstack.api.commands",
    "netstack.api.server",
    "netstack.host.listeners",
    "netstack.host.report",
)
LAZY_ASYNCIO_MODULES = (
    "asyncio.base_events",
    "asyncio.streams",
    "asyncio.unix_events",
    "netstack.dns.directory",
    "netstack.host.dns_tcp",
    "netstack.stack.vips",
)

FRAMES_PER_WAKEUP = 256
EVENTS_PER_WAKEUP = 256


class Runtime:
    udp_fast: UdpFastPath | None = None  # established UDP flows in C (with fastpath)
    dns_fast: DnsFastPath | None = None  # UDP DNS queries forwarded in C (with fastpath)

    def __init__(
        self,
        config: NetworkConfig,
        link: LinkEndpoint,
        resolv_conf: str = "/etc/resolv.conf",
        outbound_addr: str | None = None,
        outbound_addr6: str | None = None,
        limits: Limits | None = None,
        directory: DirectorySettings | None = None,
        use_asyncio: bool = True,
    ) -> None:
        """use_asyncio: run on uvloop, as the directory client needs;
        otherwise on EpollLoop, which spares the start-up asyncio's import."""
        self.config = config
        self.link = link
        self.resolv = ResolvConf(resolv_conf)
        self.epoll = select.epoll()
        self.handlers: dict[int, EventHandler] = {}
        self.stack = Stack(config, link, self, limits=limits, directory=directory)
        # aio: the same loop when it is asyncio's (None on EpollLoop)
        self.aio: asyncio.AbstractEventLoop | None = None
        self.loop: EpollLoop | asyncio.AbstractEventLoop
        if use_asyncio or directory is not None:
            import uvloop

            self.loop = self.aio = uvloop.new_event_loop()
        else:
            self.loop = EpollLoop()
        self.rx_buf = bytearray(FRAME_BUFFER_SIZE)
        self._timer: asyncio.TimerHandle | Handle | None = None
        self._timer_at: float | None = None
        self.exit_code = 0
        self._stopping = False
        self.now = time.monotonic
        self.on_exit: list[Callable[[], None]] = []
        self._dns_ips = (config.dns, DNS6)
        self.outbound: dict[int, str | None] = {
            socket.AF_INET: outbound_addr,
            socket.AF_INET6: outbound_addr6,
        }
        self.forwards = Forwards(config, self)
        self.api: ApiServer | None = None
        self.started = time.monotonic()
        self.fastpath: FastPath | None = None
        self.c_loop = False  # the loop waits in C (csrc/loop.c): see _poll_c
        self.directory_client: DirectoryClient | None = None
        # --directory: TCP to the DNS address ends here, to answer directory names
        answers = self.stack.dns.directory
        self.dns_over_tcp = None
        if answers and self.aio is not None:
            from netstack.host.dns_tcp import DnsOverTcp

            self.dns_over_tcp = DnsOverTcp(self.aio, answers, self.outbound)
        # the C paths: established TCP and UDP flows, DNS, the loop's wait, SYNs
        if (
            isinstance(link, TapLink)
            and fastpath.available()
            and os.environ.get("NETSTACK_FASTPATH", "1") != "0"
        ):
            cpaths.attach(self, config, link, directory)

    def later_modules(self) -> tuple[str, ...]:
        """What this runtime may import on first use (see LAZY_MODULES)."""
        return LAZY_MODULES + (LAZY_ASYNCIO_MODULES if self.aio is not None else ())

    # --------------------------------------------------------------- HostIO
    def connect_tcp(self, conn: TcpConnection, targets: list[HostAddr], now: float) -> HostStream:
        f = conn.flow
        if self.dns_over_tcp is not None and f.remote_port == 53 and f.remote_ip in self._dns_ips:
            try:
                host_end = self.dns_over_tcp.open(targets)
            except OSError as e:
                log.warning("dns over tcp: %s", e)
                return HostTcpStream(self, conn, [])  # the guest is refused
            self.soon(lambda: self.stack.tcp.host_connected(conn, True, 0, self.now()))
            return HostTcpStream(self, conn, targets, accepted=host_end)
        return HostTcpStream(self, conn, targets)

    def adopt_tcp(self, conn: TcpConnection, fd: int) -> HostStream:
        return HostTcpStream(self, conn, [], socket.socket(fileno=fd), opened_in_c=True)

    def open_udp(self, owner: DatagramReceiver, family_of: str) -> HostDatagram:
        family = socket.AF_INET6 if ":" in family_of else socket.AF_INET
        return HostDatagram(self, owner, family, socket.IPPROTO_UDP)

    def open_ping(self, owner: DatagramReceiver, dst: str) -> HostDatagram:
        if ":" in dst:
            return HostDatagram(self, owner, socket.AF_INET6, socket.IPPROTO_ICMPV6)
        return HostDatagram(self, owner, socket.AF_INET, socket.IPPROTO_ICMP)

    def nameservers(self) -> list[str]:
        return self.resolv.servers()

    def is_host_address(self, ip: bytes) -> bool:
        """Whether ip is local here: binding to a non-local address fails."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((socket.inet_ntoa(ip), 0))
            except OSError:
                return False
        return True

    def bind_outbound(self, sock: socket.socket, family: int) -> None:
        """Bind an outgoing socket to --outbound-addr / --outbound-addr6."""
        addr = self.outbound.get(family)
        if addr is not None:
            sock.bind((addr, 0))

    # ------------------------------------------------------- forwards and API
    def listen(self, rule: ForwardRule) -> TcpForwardListener | UdpForwardListener:
        from netstack.host.listeners import TcpForwardListener, UdpForwardListener

        if rule.proto == "tcp":
            return TcpForwardListener(self, rule)
        return UdpForwardListener(self, rule)

    def serve_api(self, sock: socket.socket, path: str) -> None:
        """Serve the API on a socket already bound and listening."""
        from netstack.api import commands as api_commands
        from netstack.api.server import ApiServer

        self.api = ApiServer(
            sock, path, lambda buf: api_commands.handle(buf, self.forwards, self), self
        )
        self.api.start()

    def api_connections(self) -> list[dict[str, Any]]:
        from netstack.host import report

        return report.connections(self)

    def api_stats(self) -> dict[str, Any]:
        from netstack.host import report

        return report.stats(self)

    # -------------------------------------------------------------- directory
    def follow_directory(self, client: DirectoryClient) -> None:
        """Keep client's watch open while the loop runs; each new view goes to the
        connects that wait for one (the stack was built with client as its names)."""
        aio = self.aio
        if aio is None:
            raise RuntimeError("the directory client needs the runtime built with use_asyncio")
        self.directory_client = client
        client.on_view = self._directory_view
        client.start(aio)

        def stop_client() -> None:
            import asyncio

            client.close()
            aio.run_until_complete(asyncio.sleep(0))  # let the cancellations land

        self.on_exit.append(stop_client)

    def _directory_view(self, view: View) -> None:
        if self.stack.vips is not None:
            try:
                self.stack.vips.view_changed(time.monotonic())
            except LinkClosed:
                self.stop(0)
                return
        self._reschedule()

    # ----------------------------------------------------------- registration
    def register(self, fd: int, events: int, handler: EventHandler) -> None:
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def registered_in_c(self, fd: int, handler: EventHandler) -> None:
        """fd is in the epoll already (C added it): its events go to handler."""
        self.handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    @property
    def timers(self) -> TimerQueue:
        return self.stack.timers

    def unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            fn(*args)
            self._reschedule()

        self.loop.call_soon(run)

    # ------------------------------------------------------------------- loop
    def _on_link_readable(self) -> None:
        stack = self.stack
        buf = self.rx_buf
        now = time.monotonic()
        frames = 0
        try:
            for _ in range(FRAMES_PER_WAKEUP):
                n = self.link.read_into(buf)
                if n == 0:
                    break
                stack.receive(buf, n, now)
                frames += 1
            stack.end_of_batch(now)
            stack.stats.count("frames_from_guest", frames)
        except LinkClosed as e:
            log.info("the TAP went away (%s): exiting", e)
            self.stop(0)
            return
        self._reschedule()

    def _on_link_readable_fast(self) -> None:
        """C reads the batch and runs held flows' segments; it stops at each frame
        Python must see (left in rx_buf) and at the end. The common wakeup, where C
        did everything, costs one call here."""
        fast = self.fastpath
        assert fast is not None
        now = time.monotonic()
        try:
            n = fast.rx(now)
            if n == 0:
                return
            self._python_frames(fast, n, now)
        except (LinkClosed, FlowPathError) as e:
            log.info("the TAP went away (%s): exiting", e)
            self.stop(0)
            return
        self._reschedule()

    def _python_frames(self, fast: FastPath, n: int, now: float) -> None:
        """Frames C left for Python, the first (n bytes) in rx_buf; then the end of the
        batch. Raises LinkClosed or FlowPathError."""
        stack = self.stack
        buf = self.rx_buf
        frames = 0
        ctx = fast.ctx
        while 0 < n < PYTHON_WORK:
            if ctx.nadopts:
                fast.adopt_listed()  # the frame's flow, which C opened
            stack.receive(buf, n, now)
            frames += 1
            if frames == FRAMES_PER_WAKEUP:
                # the reader fires again if frames wait, but not for C's dirty flows:
                # their gathered bytes and owed ACKs go now, not at the next frame
                fast.rx_flush(now)
                break  # the loop's other work gets a turn
            n = fast.rx_next(now)
        stack.end_of_batch(now)
        self._after_fast(fast, now)

    def _poll_c(self, timeout: float) -> list[tuple[int, int]]:
        """EpollLoop's wait, in C: held flows are served there; what comes back is
        dispatched here (host sockets' events, frames, ejects and timers), and the
        loop's own readers' events are returned to the loop."""
        fast = self.fastpath
        assert fast is not None
        deadline = math.inf if timeout < 0 else time.monotonic() + timeout
        try:
            n = fast.loop(self.epoll.fileno(), deadline)
        except FlowPathError as e:
            log.info("the TAP went away (%s): exiting", e)
            self.stop(0)
            return []
        events = fast.events()
        if n == 0 and not events:
            return events  # the deadline, or a signal
        now = time.monotonic()
        if fast.ctx.nadopts:
            fast.adopt_listed()  # flows C opened whose frames or events follow
        readers: list[tuple[int, int]] = []
        host: list[tuple[int, int]] = []
        handlers = self.handlers
        for fd, ev in events:
            if fd in handlers:
                host.append((fd, ev))
            else:
                readers.append((fd, ev))
        if n >= PYTHON_WORK and self.udp_fast is not None:
            try:
                # replies C read and left to Python, in order, before any handler runs
                # (as in _on_host_events_fast)
                self.udp_fast.after_call(now)
            except LinkClosed as e:
                log.info("the TAP went away (%s): exiting", e)
                self.stop(0)
                return readers
        if host or n >= PYTHON_WORK:
            self._dispatch_host_events(host, now)
        frame = n % PYTHON_WORK
        if frame:
            try:
                self._python_frames(fast, frame, now)
            except (LinkClosed, FlowPathError) as e:
                log.info("the TAP went away (%s): exiting", e)
                self.stop(0)
                return readers
            self._reschedule()
        return readers

    def _after_fast(self, fast: FastPath, now: float) -> None:
        for conn in fast.after_call(now):
            self.stack.tcp.after(conn)
        if self.dns_fast is not None:
            self.dns_fast.after_call(now)  # a timer to arm, answers for Python

    def _on_host_events(self) -> None:
        self._dispatch_host_events(self.epoll.poll(0, EVENTS_PER_WAKEUP), time.monotonic())

    def _on_host_events_fast(self) -> None:
        """C polls the host sockets and serves held flows; Python gets the rest."""
        fast = self.fastpath
        assert fast is not None
        now = time.monotonic()
        try:
            events, work = fast.host_poll(self.epoll.fileno(), now)
            if work and self.udp_fast is not None:
                # replies C read and left to Python, in order, before any handler runs
                # (one may release their flow: a forwarded port's new route)
                self.udp_fast.after_call(now)
        except (FlowPathError, LinkClosed) as e:
            log.info("the TAP went away (%s): exiting", e)
            self.stop(0)
            return
        if events or work:
            self._dispatch_host_events(events, now)

    def _dispatch_host_events(self, events: list[tuple[int, int]], now: float) -> None:
        handlers = self.handlers
        for fd, ev in events:
            handler = handlers.get(fd)
            if handler is not None:
                try:
                    handler.on_events(ev, now)
                except LinkClosed as e:
                    log.info("the TAP went away (%s): exiting", e)
                    self.stop(0)
                    return
                except Exception:
                    log.exception("host event handler failed")
                    self.stack.stats.drop("internal_error")
        if self.fastpath is not None:
            try:
                self._after_fast(self.fastpath, now)
            except LinkClosed:
                self.stop(0)
                return
        self._reschedule()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.stack.run_timers(time.monotonic())
        except LinkClosed:
            self.stop(0)
            return
        self._reschedule()

    def _reschedule(self) -> None:
        d = self.stack.timers.next_deadline()
        if d is None:
            return
        if self._timer_at is not None and self._timer_at <= d:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = d
        self._timer = self.loop.call_later(max(0.0, d - time.monotonic()), self._on_timer)

    # ---------------------------------------------------------------- process
    def watch_exit_fd(self, fd: int) -> None:
        """Exit 0 when fd reports hang-up or error, or is not open (slirp4netns -e)."""
        try:
            self.epoll.register(fd, 0)  # epoll always reports EPOLLHUP and EPOLLERR
        except OSError as e:
            if e.errno == errno.EBADF:
                log.info("exit-fd %d is not open: exiting", fd)
                self.loop.call_soon(self.stop, 0)
            return  # EPERM: a regular file or /dev/null never fires
        self.handlers[fd] = _ExitFd(self)

    def watch_target_process(self, pid: int) -> None:
        """Exit 0 when the target process (the container) exits: its namespace is
        useless then, even though our TAP fd keeps it alive."""
        try:
            fd = os.pidfd_open(pid)
        except OSError as e:
            log.info("cannot watch process %d: %s", pid, e)
            return

        def gone() -> None:
            log.info("target process %d exited: exiting", pid)
            self.loop.remove_reader(fd)
            os.close(fd)
            self.stop(0)

        self.loop.add_reader(fd, gone)

    def watch_namespace_path(self, path: str, interval: float = 2.0) -> None:
        """Exit 0 when the namespace file goes away (`ip netns del`, podman's cleanup)."""
        try:
            first = os.stat(path)
        except OSError:
            return  # not visible from here (the sandbox hides /proc): nothing to watch
        ident = (first.st_dev, first.st_ino)

        def check() -> None:
            try:
                st = os.stat(path)
                same = (st.st_dev, st.st_ino) == ident
            except OSError:
                same = False
            if not same:
                log.info("namespace %s is gone: exiting", path)
                self.stop(0)
                return
            self.loop.call_later(interval, check)

        self.loop.call_later(interval, check)

    def stop(self, code: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.exit_code = code
        self.loop.stop()

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        loop = self.loop
        if self.aio is not None:
            import asyncio

            asyncio.set_event_loop(self.aio)
        if self.c_loop:
            assert isinstance(loop, EpollLoop)
            loop.add_reader(self.link.fileno(), self._on_link_readable_fast)  # C serves it
            loop.set_poll(self._poll_c)
        elif self.fastpath is not None:
            loop.add_reader(self.link.fileno(), self._on_link_readable_fast)
            loop.add_reader(self.epoll.fileno(), self._on_host_events_fast)
        else:
            loop.add_reader(self.link.fileno(), self._on_link_readable)
            loop.add_reader(self.epoll.fileno(), self._on_host_events)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop, 0)
        self.stack.start(time.monotonic())
        self._reschedule()
        if on_ready is not None:
            loop.call_soon(on_ready)
        loop.call_soon(self.resolv.announce)  # logging is imported after the ready byte
        profile_path = os.environ.get("NETSTACK_PROFILE")  # a developer's cProfile dump
        profiler = None
        if profile_path:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        try:
            loop.run_forever()
        finally:
            if profiler is not None and profile_path:
                profiler.disable()
                profiler.dump_stats(profile_path)
            self.shutdown()
        return self.exit_code

    def shutdown(self) -> None:
        if self.dns_over_tcp is not None and self.aio is not None:
            import asyncio

            self.dns_over_tcp.close()
            self.aio.run_until_complete(asyncio.sleep(0))  # let the cancellations land
        for fn in self.on_exit:
            try:
                fn()
            except Exception:
                log.exception("exit handler failed")
        log.info("exiting; counters: %s", self.stack.stats.snapshot())
        if self.api is not None:
            self.api.close()
        self.forwards.close_all()
        self.stack.close()
        if self.fastpath is not None:
            self.fastpath.close()
        try:
            self.loop.remove_reader(self.link.fileno())
        except Exception:
            pass
        self.link.close()
        self.epoll.close()
        self.loop.close()


class _ExitFd:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_events(self, events: int, now: float) -> None:
        log.info("exitfd event")
        self.runtime.stop(0)
