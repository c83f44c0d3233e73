"""One proxied TCP connection: the guest-facing state machine (sans-I/O, takes `now`).

States: CONNECTING (guest SYN seen, host connect() in progress) -> SYN_RECEIVED
(SYN-ACK sent) -> ESTABLISHED -> TIME_WAIT -> CLOSED. Half-closes are tracked as two
directions (`fin_from_guest`, `eof_from_host`/`fin_to_guest`) rather than as the RFC's
FIN_WAIT/CLOSE_WAIT names. Every state change goes through `_set_state`.
"""

from __future__ import annotations

import errno
import random

from netstack.log import DEBUG, get_logger
from netstack.tcp import handshake, to_guest
from netstack.tcp.fastpath import FastFlow
from netstack.tcp.interfaces import Guest, HostStream, Refusal, TcpState, refusal_for_errno
from netstack.tcp.output import FlowAddrs, SegmentWriter
from netstack.tcp.params import (
    CONNECT_TIMEOUT,
    DEFAULT_MSS,
    DUPACKS_FOR_RETRANSMIT,
    FIN_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_RETRIES,
    OUR_WSCALE,
    RTO_INITIAL,
    RTO_MAX,
    SYNACK_RETRIES,
    TIME_WAIT,
)
from netstack.tcp.to_host import GATHER_MAX_SEGMENT, WINDOW_MAX, PendingBudget, ToHost
from netstack.wire import icmpv4, tcp
from netstack.wire.tcp import ACK, FIN, RST, SYN, seq_diff, seq_lt

log = get_logger(__name__)


class TcpConnection:
    def __init__(
        self,
        flow: FlowAddrs,
        writer: SegmentWriter,
        syn: tcp.TcpHeader | None,
        syn_quote: bytes,
        mtu: int,
        now: float,
        guest: Guest,
        budget: PendingBudget | None = None,
    ) -> None:
        self.flow = flow
        self.writer = writer
        self.guest = guest
        self.state = TcpState.CONNECTING
        self.host: HostStream | None = None
        self.syn_quote = syn_quote  # IP header + 8 bytes of the SYN, for ICMP errors

        self.mtu = mtu
        # MSS = MTU less the IP and TCP headers (IPv6's is 20 bytes longer)
        self.headers_len = 60 if len(flow.guest_ip) == 16 else 40
        self.our_mss = max(64, mtu - self.headers_len)
        self.opened_by_host = syn is None
        if syn is not None:  # the guest opens: we answer its SYN
            handshake.take_syn_options(self, syn)
            self.rcv_nxt = (syn.seq + 1) & 0xFFFFFFFF
        else:  # we open toward the guest (a port forward): see open_to_guest
            self.rcv_nxt = 0
            self.guest_wscale = 0
            self.our_wscale = OUR_WSCALE
            self.ts_enabled = True  # offered in our SYN; the SYN-ACK decides
            self.ts_recent = 0
            self.seg_size = DEFAULT_MSS
            self.guest_window = 0

        self.iss = random.getrandbits(32)
        self.snd_una = self.iss
        self.snd_nxt = self.iss

        self.to_host = ToHost(budget)
        self.acked_in_queue = 0  # acknowledged bytes still at the head of the host queue
        self.fin_from_guest = False
        self.host_write_shut = False
        self.eof_from_host = False
        self.fin_to_guest = False
        self.fin_acked = False
        # our FIN went before the guest's: we close actively and linger in TIME_WAIT
        # (RFC 9293 3.6); closing after the guest, LAST-ACK goes straight to CLOSED
        self.fin_to_guest_first = False
        self.host_readable = False
        self.ack_needed = False
        self.window_advertised = 0
        # the right edge of the window we advertised (a sequence number): nothing past
        # it is taken, and it never moves left (RFC 9293 3.8.6)
        self.rcv_adv = self.rcv_nxt

        self.rto = RTO_INITIAL
        self.rto_deadline: float | None = None
        self.retries = 0
        self.dupacks = 0
        # loss recovery (RFC 6582's "recover"): the highest sequence number sent when a
        # retransmission began; until the guest acknowledges it, duplicate ACKs start
        # no new retransmission and each partial ACK resends the next hole only
        self.recover: int | None = None
        self.resend_on_partial_ack = False  # a fast retransmission's, not a timeout's
        self.created = now
        self.last_activity = now
        self.state_deadline: float | None = now + CONNECT_TIMEOUT
        self.bytes_from_guest = 0
        self.bytes_to_guest = 0
        self.fast: FastFlow | None = None  # set while the C flow path holds the state

    @classmethod
    def opened_in_c(
        cls,
        flow: FlowAddrs,
        writer: SegmentWriter,
        mtu: int,
        created: float,
        iss: int,
        guest: Guest,
        budget: PendingBudget | None = None,
        forwarded: bool = False,
    ) -> TcpConnection:
        """A guest-opened connection whose SYN the C flow path answered (csrc/
        flow_syn.c): SYN_RECEIVED with C's initial sequence number; or (forwarded) a
        port forward's connection C accepted and sent its SYN for (csrc/
        flow_forward.c): SYN_SENT. The options and the rest of the state are C's,
        copied in by FastPath.take_on."""
        conn = cls(flow, writer, None, b"", mtu, created, guest, budget)
        conn.opened_by_host = forwarded
        conn.iss = conn.snd_una = iss
        conn.snd_nxt = (iss + 1) & 0xFFFFFFFF
        if forwarded:
            conn.state = TcpState.SYN_SENT  # the connect timeout from `created` holds
        else:
            conn.state = TcpState.SYN_RECEIVED
            conn.state_deadline = None
        return conn

    # ---------------------------------------------------------------- state
    def _set_state(self, state: TcpState, why: str) -> None:
        if log.isEnabledFor(DEBUG):
            log.debug(
                "tcp %s:%d->%s:%d %s -> %s (%s)",
                _ip(self.flow.guest_ip),
                self.flow.guest_port,
                _ip(self.flow.remote_ip),
                self.flow.remote_port,
                self.state.value,
                state.value,
                why,
            )
        self.state = state

    @property
    def closed(self) -> bool:
        return self.state is TcpState.CLOSED

    @property
    def deadline(self) -> float | None:
        """The next time on_timer wants to run, or None."""
        fast = self.fast
        d = self.rto_deadline if fast is None else fast.rto_deadline()
        s = self.state_deadline
        if d is None or (s is not None and s < d):
            d = s
        if fast is not None:
            fast.note_timer(d)  # the timer queue schedules at d or earlier
        return d

    # ---------------------------------------------------------- host events
    def attach_host(self, host: HostStream) -> None:
        self.host = host

    def open_to_guest(self, now: float) -> None:
        """Start a connection toward the guest (the host side is already connected)."""
        handshake.open_to_guest(self, now)

    def on_host_connected(self, now: float) -> None:
        handshake.answer_guest_syn(self, now)

    def on_host_connect_failed(self, err: int, now: float) -> None:
        if self.state is not TcpState.CONNECTING:
            return
        self.refuse(refusal_for_errno(err))

    def refuse(self, how: Refusal) -> None:
        """Answer the guest's SYN with RST or ICMP unreachable and close."""
        if how is Refusal.RESET:
            self.writer.send(self.flow, 0, self.rcv_nxt, RST | ACK, 0, None, 0, 0)
        else:
            code = (
                icmpv4.CODE_NET_UNREACHABLE
                if how is Refusal.NET_UNREACHABLE
                else icmpv4.CODE_HOST_UNREACHABLE
            )
            self.guest.send_icmp_unreachable(code, self.syn_quote)
        self._close(reset_host=True, why=f"refused: {how.value}")

    def on_host_readable(self, now: float) -> None:
        self.host_readable = True
        if self.state is TcpState.ESTABLISHED:
            to_guest.pump(self, now)
            self._maybe_finish(now)

    def on_host_writable(self, now: float) -> None:
        if self.state is not TcpState.ESTABLISHED or self.host is None:
            return
        if self.to_host.pending:
            if not self._flush_pending():
                return
        elif self.window_advertised >= WINDOW_MAX // 2:
            return  # epoll reports "writable" with every read; nothing was held back
        elif seq_diff(self.rcv_adv, self.rcv_nxt) >= 2 * self.our_mss:
            return  # the guest can still send: the ACK of what it sends carries the window
        if self._receive_window(fresh=True) >= 2 * self.window_advertised + self.our_mss:
            self._send_ack(now)  # a window update the guest may be waiting for
        self._maybe_finish(now)

    def on_host_error(self, err: int, now: float) -> None:
        """The host socket failed (reset, broken pipe): reset the guest side."""
        if self.state in (TcpState.CLOSED, TcpState.TIME_WAIT):
            return
        if self.state is TcpState.CONNECTING:
            self.on_host_connect_failed(err, now)
            return
        self._reset_guest(f"host error {errno.errorcode.get(err, err)}")

    # --------------------------------------------------------- guest segments
    def on_segment(self, seg: tcp.TcpHeader, payload: memoryview, now: float) -> None:
        """A segment from the guest for this flow."""
        flags = seg.flags
        state = self.state
        if state is TcpState.CLOSED:
            return
        if state is TcpState.SYN_SENT:
            handshake.on_synack(self, seg, now)
            return
        if flags & RST:
            if self._seq_acceptable(seg.seq):
                self._close(reset_host=True, why="reset by guest")
            return
        if flags & SYN:
            if state is TcpState.SYN_RECEIVED and seg.seq == (self.rcv_nxt - 1) & 0xFFFFFFFF:
                handshake.send_synack(self, now)  # our SYN-ACK was lost
            elif state is not TcpState.CONNECTING:
                self._send_ack(now)  # challenge ACK (RFC 5961 4.2)
            return
        if state is TcpState.CONNECTING:
            return  # nothing legitimate arrives before our SYN-ACK
        if not flags & ACK:
            return
        self.last_activity = now
        if self.ts_enabled and seg.options.ts_val is not None and seg.seq == self.rcv_nxt:
            self.ts_recent = seg.options.ts_val

        if state is TcpState.SYN_RECEIVED:
            if seg.ack != (self.iss + 1) & 0xFFFFFFFF:
                self.writer.send(self.flow, seg.ack, 0, RST, 0, None, 0, 0)
                return
            self.snd_una = seg.ack
            self._disarm_rto()
            self._set_state(TcpState.ESTABLISHED, "handshake done")
            self.guest_window = seg.window << self.guest_wscale

        if self.state is TcpState.TIME_WAIT:
            if flags & FIN:
                self._send_ack(now)
            return

        self._on_ack(seg, len(payload), now)
        if self.state is not TcpState.ESTABLISHED:
            return
        if payload or flags & FIN:
            self._on_data(seg.seq, payload, bool(flags & FIN), now)
        elif seg.seq != self.rcv_nxt:
            self.ack_needed = True  # a window probe or keepalive: answer with our window
        if self.host_readable:
            to_guest.pump(self, now)
        self._maybe_finish(now)

    def established_in_c(self) -> None:
        """The C flow path took the guest's ACK of our SYN-ACK (its state is copied
        back already: sequence numbers, window, timers)."""
        self._set_state(TcpState.ESTABLISHED, "handshake done (in C)")
        self._update_state_deadline(self.last_activity)

    def closed_in_c(self, now: float) -> None:
        """The C flow path took both FINs and the guest's ACK of ours (its state is
        copied back already): the connection closes as it would have here."""
        self._maybe_finish(now)

    def _seq_acceptable(self, seq: int) -> bool:
        d = seq_diff(seq, self.rcv_nxt)
        return 0 <= d <= max(self.window_advertised, 1)

    def _on_ack(self, seg: tcp.TcpHeader, payload_len: int, now: float) -> None:
        ack = seg.ack
        window = seg.window << self.guest_wscale
        recover = self.recover
        if seq_lt(self.snd_nxt, ack):
            if recover is None or seq_lt(recover, ack):
                self.ack_needed = True  # acknowledges what we never sent
                return
            # sent before a timeout's rewind: the guest had it all along
            self.snd_nxt = ack
        if seq_lt(self.snd_una, ack):
            acked = seq_diff(ack, self.snd_una)
            if self.fin_to_guest and ack == self.snd_nxt:
                self.fin_acked = True
                acked -= 1
            if acked > 0:
                # dropped from the host socket at the end of the batch, in one call
                self.acked_in_queue += acked
            self.snd_una = ack
            self.retries = 0
            self.rto = RTO_INITIAL
            self.dupacks = 0
            if recover is not None:
                if not seq_lt(ack, recover):
                    self.recover = None  # all that was outstanding arrived
                elif self.resend_on_partial_ack:
                    to_guest.retransmit_first(self, now)  # a partial ACK: the next hole
            if self.snd_una == self.snd_nxt:
                self._disarm_rto()
            else:
                self._arm_rto(now, restart=True)
        elif self.snd_una == self.snd_nxt:
            self.retries = 0  # the guest is alive (answering a zero-window probe)
        elif (
            ack == self.snd_una
            and payload_len == 0
            and not seg.flags & FIN
            and self.snd_nxt != self.snd_una
            and window == self.guest_window
        ):
            self.dupacks += 1
            if self.dupacks == DUPACKS_FOR_RETRANSMIT and recover is None:
                # fast retransmit of the first unacknowledged segment only: the guest
                # holds what came after the hole, and resending it all would bring a
                # duplicate ACK per segment, and with them the next "loss"
                self.recover = self.snd_nxt
                self.resend_on_partial_ack = True
                to_guest.retransmit_first(self, now)
        self.guest_window = window

    def _on_data(self, seq: int, payload: memoryview, fin: bool, now: float) -> None:
        offset = seq_diff(self.rcv_nxt, seq)
        if offset < 0:
            self._send_ack(now)  # a gap: the duplicate ACK asks for a retransmission
            return
        if offset > 0:
            if offset > len(payload) or (offset == len(payload) and not fin):
                self.ack_needed = True  # an old duplicate
                return
            if offset == len(payload):  # only the FIN is new... or it was seen
                if self.fin_from_guest:
                    self.ack_needed = True
                    return
            payload = payload[offset:]
        room = seq_diff(self.rcv_adv, self.rcv_nxt)
        if len(payload) > room:  # past the window we advertised: not taken, not ACKed
            payload = payload[: max(0, room)]
            fin = False
            self.ack_needed = True
            self.guest.count_drop("tcp_beyond_window")
        if payload and not self.fin_from_guest:
            taken = self._data_to_host(payload, now)
            if taken < len(payload):
                fin = False  # the FIN lies beyond what we took
            self.rcv_nxt = (self.rcv_nxt + taken) & 0xFFFFFFFF
            self.bytes_from_guest += taken
            self.ack_needed = True
        if fin and not self.fin_from_guest:
            self.fin_from_guest = True
            self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
            if self._write_gathered(now) and not self.to_host.pending:
                self._shutdown_host_write()
            self._send_ack(now)

    def _data_to_host(self, payload: memoryview, now: float) -> int:
        """Hand guest bytes to the host side; returns how many we took."""
        to_host = self.to_host
        if not to_host.pending and len(payload) <= GATHER_MAX_SEGMENT:
            to_host.gathered += payload  # the common case, inline: it is hot
            return len(payload)
        assert self.host is not None
        try:
            return self.to_host.take(self.host, payload)
        except OSError as e:
            self.on_host_error(e.errno or errno.EIO, now)
            return 0

    def _write_gathered(self, now: float) -> bool:
        """Write the batch's gathered segments; True when all went."""
        if self.host is None:
            return True
        try:
            return self.to_host.write_gathered(self.host)
        except OSError as e:
            self.on_host_error(e.errno or errno.EIO, now)
            return False

    def _flush_pending(self) -> bool:
        """Write pending guest bytes to the host; True when all are written."""
        assert self.host is not None
        try:
            done = self.to_host.flush_pending(self.host)
        except OSError as e:
            self.on_host_error(e.errno or errno.EIO, self.last_activity)
            return False
        if done and self.fin_from_guest:
            self._shutdown_host_write()
        return done

    def _shutdown_host_write(self) -> None:
        if self.host_write_shut or self.host is None:
            return
        self.host_write_shut = True
        try:
            self.host.shutdown_write()
        except OSError:
            pass

    # ------------------------------------------------------ data to the guest
    # ----------------------------------------------------------------- timers
    def _arm_rto(self, now: float, restart: bool = False) -> None:
        if self.rto_deadline is None or restart:
            self.rto_deadline = now + self.rto

    def _disarm_rto(self) -> None:
        self.rto_deadline = None

    def on_timer(self, now: float) -> None:
        if self.fast is not None:
            self.fast.release(self, now)
        if self.state_deadline is not None and now >= self.state_deadline:
            self.state_deadline = None
            if self.state is TcpState.CONNECTING:
                self.refuse(Refusal.HOST_UNREACHABLE)
                return
            if self.state is TcpState.SYN_SENT:
                self._close(reset_host=False, why="guest did not answer the forwarded SYN")
                return
            if self.state is TcpState.TIME_WAIT:
                self._set_state(TcpState.CLOSED, "time-wait over")
                return
            if self.state is TcpState.ESTABLISHED:
                if now >= self.last_activity + self._idle_limit():
                    self._reset_guest("idle timeout")
                    return
        if self.rto_deadline is not None and now >= self.rto_deadline:
            self.rto_deadline = None
            self.retries += 1
            if self.state is TcpState.SYN_RECEIVED and self.retries > SYNACK_RETRIES:
                self._close(reset_host=True, why="guest never completed the handshake")
                return
            if self.retries > MAX_RETRIES:
                self._reset_guest("guest silent: retransmissions exhausted")
                return
            self.rto = min(self.rto * 2, RTO_MAX)
            if self.state is TcpState.SYN_RECEIVED:
                handshake.send_synack(self, now)
                self._arm_rto(now)
            elif self.state is TcpState.SYN_SENT:
                handshake.send_syn(self, now)
                self._arm_rto(now)
            elif self.state is TcpState.ESTABLISHED:
                if self.snd_nxt == self.snd_una and self.guest_window == 0:
                    to_guest.send_window_probe(self, now)
                    self._arm_rto(now)
                else:
                    to_guest.rewind(self, "timeout")
                    to_guest.pump(self, now)
                    if self.rto_deadline is None and self.snd_nxt != self.snd_una:
                        self._arm_rto(now)
        self._update_state_deadline(now)

    def _update_state_deadline(self, now: float) -> None:
        if self.state is not TcpState.ESTABLISHED:
            return
        self.state_deadline = self.last_activity + self._idle_limit()

    def _idle_limit(self) -> float:
        both_closed = self.fin_from_guest and self.fin_to_guest
        return FIN_TIMEOUT if both_closed else IDLE_TIMEOUT

    # ----------------------------------------------------------------- output
    def flush(self, now: float) -> None:
        """End of a batch: write what was gathered, then send the ACK owed to the guest
        (if data did not carry it)."""
        if self.to_host.gathered:
            self._write_gathered(now)
        if self.acked_in_queue and self.host is not None:
            try:
                self.host.discard(self.acked_in_queue)
            except OSError as e:
                self.on_host_error(e.errno or errno.EIO, now)
                return
            self.acked_in_queue = 0
        if self.ack_needed and self.state is TcpState.ESTABLISHED:
            self._send_ack(now)
        if self.state is TcpState.ESTABLISHED:
            self._update_state_deadline(now)

    def _send_ack(self, now: float) -> None:
        self.writer.send(
            self.flow,
            self.snd_nxt,
            self.rcv_nxt,
            ACK,
            self._window_field(),
            self._ts(now),
            0,
            self.seg_size,
        )
        self.ack_needed = False

    def _receive_window(self, fresh: bool = False) -> int:
        if self.host is None:
            return 0
        return self.to_host.window(self.host, fresh)

    def _window_field(self) -> int:
        window = self._receive_window()
        self.window_advertised = window
        field = min(window >> self.our_wscale, 0xFFFF)
        self.advertise(field << self.our_wscale)
        return field

    def advertise(self, window: int) -> None:
        """window goes to the guest with ACK rcv_nxt: move the right edge, never left."""
        room = seq_diff(self.rcv_adv, self.rcv_nxt)
        if room < window or room > WINDOW_MAX:  # (beyond any window: never set yet)
            self.rcv_adv = (self.rcv_nxt + window) & 0xFFFFFFFF

    def _ts_val(self, now: float) -> int:
        return int(now * 1000) & 0xFFFFFFFF

    def _ts(self, now: float) -> tuple[int, int] | None:
        return (self._ts_val(now), self.ts_recent) if self.ts_enabled else None

    # ---------------------------------------------------------------- closing
    def _maybe_finish(self, now: float) -> None:
        if self.fin_from_guest and self.host_write_shut and self.fin_to_guest and self.fin_acked:
            if self.fin_to_guest_first:
                self._close(reset_host=False, why="both sides closed", linger=now)
            else:
                self._close(reset_host=False, why="both sides closed, the guest first")

    def abort(self, why: str) -> None:
        """Give up on the connection: RST to the guest, reset the host side."""
        if self.fast is not None:
            self.fast.release(self, self.last_activity)
        if self.state is TcpState.CONNECTING:
            self.refuse(Refusal.RESET)
        elif self.state not in (TcpState.CLOSED, TcpState.TIME_WAIT):
            self._reset_guest(why)

    def _reset_guest(self, why: str) -> None:
        self.writer.send(self.flow, self.snd_nxt, self.rcv_nxt, RST | ACK, 0, None, 0, 0)
        self._close(reset_host=True, why=why)

    def _close(self, reset_host: bool, why: str, linger: float | None = None) -> None:
        if self.host is not None:
            if self.acked_in_queue and not reset_host:
                # bytes left unread in a closing socket make Linux send a RST, which
                # would throw away what the host peer has not read yet
                try:
                    self.host.discard(self.acked_in_queue)
                except OSError:
                    pass
                self.acked_in_queue = 0
            self.host.close(reset=reset_host)
            self.host = None
        self.to_host.clear()
        self.rto_deadline = None
        if linger is not None:
            self._set_state(TcpState.TIME_WAIT, why)
            self.state_deadline = linger + TIME_WAIT
        else:
            self._set_state(TcpState.CLOSED, why)
            self.state_deadline = None


def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)
