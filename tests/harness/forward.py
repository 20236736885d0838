"""A TCP forwarder whose listening socket lives in another network namespace.

    python forward.py --netns /run/netns/NODE --listen 127.0.0.1:6443 --connect 127.0.0.1:6443

The listening socket is created inside ``--netns`` (the process joins it only for that one call and comes
back), upstream connections are made from the process's own namespace: so processes in the node namespace
reach the API server on the root namespace's loopback at the same address as everybody else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket

CLONE_NEWNET = 0x40000000
MAX_CONNECTIONS = 256
CHUNK = 64 * 1024


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def listen_in(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket created inside the network namespace at path ``netns``."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    sock.setblocking(False)
    return sock


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


async def serve(listener: socket.socket, upstream: tuple[str, int]) -> None:
    """Forward every accepted connection to ``upstream`` until SIGTERM."""
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with slots:
            try:
                up_reader, up_writer = await asyncio.open_connection(*upstream)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            for w in (writer, up_writer):
                w.close()

    server = await asyncio.start_server(handle, sock=listener)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--netns", required=True, help="path of the namespace to listen in")
    parser.add_argument("--listen", required=True, type=_address, help="HOST:PORT inside --netns")
    parser.add_argument("--connect", required=True, type=_address, help="HOST:PORT in our own namespace")
    args = parser.parse_args()
    listener = listen_in(args.netns, *args.listen)
    asyncio.run(serve(listener, args.connect))


if __name__ == "__main__":
    main()
