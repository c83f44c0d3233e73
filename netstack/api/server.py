"""The API socket: AF_UNIX stream, mode 0600, one request per connection, one compact
JSON reply, then close. A request may arrive in pieces; it is complete when a JSON
value parses, at EOF, after a quiet spell, or at 4096 bytes. Clients are served by
coroutines on the stack's loop, so a slow or silent one never stalls the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

from netstack.api import commands

log = logging.getLogger(__name__)

FIRST_BYTE_TIMEOUT = 5.0
QUIET_TIMEOUT = 0.5
WRITE_TIMEOUT = 5.0
MAX_CLIENTS = 64
SUN_PATH_MAX = 108


def bind_api_socket(path: str) -> socket.socket:
    """Bind and listen now (before ready-fd); raises OSError or ValueError."""
    if len(path.encode()) >= SUN_PATH_MAX:
        raise ValueError(f"API socket path too long ({len(path.encode())} >= {SUN_PATH_MAX})")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(MAX_CLIENTS)
    sock.setblocking(False)
    return sock


class ApiServer:
    def __init__(self, sock: socket.socket, path: str, handle: Callable[[bytes], bytes]) -> None:
        self.sock = sock
        self.path = path
        self.handle = handle
        self.clients = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, sock=self.sock)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            buf = await self._read_request(reader)
            log.debug("api_handler: got request: %r", buf[:200])
            reply = self.handle(buf)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            log.debug("api client: %s", e)
        except Exception:
            log.exception("api client failed")
        finally:
            self.clients -= 1
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        buf = b""
        timeout = FIRST_BYTE_TIMEOUT
        while len(buf) < commands.MAX_REQUEST:
            try:
                chunk = await asyncio.wait_for(
                    reader.read(commands.MAX_REQUEST - len(buf)), timeout
                )
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            if commands.parse_complete(buf) is not None:
                break
            timeout = QUIET_TIMEOUT
        return buf

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
