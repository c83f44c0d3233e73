"""TCP parameters shared by the connection and its handshake."""

# Timers, in seconds. The guest is on the same machine: its RTT is microseconds, so
# the floor is what a lost frame costs, not a path estimate.
RTO_INITIAL = 0.2
RTO_MAX = 30.0
MAX_RETRIES = 12  # 0.2 s doubling, capped at 30 s: about 3.5 minutes of silence
SYNACK_RETRIES = 5  # as Linux's tcp_synack_retries: a handshake gets about 12 s
DUPACKS_FOR_RETRANSMIT = 3
CONNECT_TIMEOUT = 75.0
TIME_WAIT = 2.0
IDLE_TIMEOUT = 7200.0  # no byte either way for two hours: the host socket is closed
FIN_TIMEOUT = 60.0  # both sides closed, waiting on the last ACK

OUR_WSCALE = 7  # a 16-bit window << 7 reaches 8 MiB, above WINDOW_MAX
DEFAULT_MSS = 536  # RFC 9293 3.7.1, when the guest's SYN carries none
