"""Traffic for tests and benchmarks: UDP and TCP request/response (UDP also with sendmmsg/recvmmsg), a UDP
flood, a packet-socket capture.

Run as ``python -m mace_lab.traffic <command> ...``; every command prints JSON lines on stdout.
Servers print ``{"ready": ...}`` once bound; clients print one line per request with timestamps taken
right around their own socket calls (``*_ns``: CLOCK_MONOTONIC, the clock of ``bpf_ktime_get_ns``;
``real_offset_ns``: CLOCK_REALTIME minus CLOCK_MONOTONIC, sampled after the request) and a final
``{"done": {...}}``. UDP requests carry their sequence number big-endian in the first 8 payload bytes,
so the ``udp_payload`` field correlates them; the echo server sends the payload back unchanged.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

SEQ = struct.Struct("!Q")
TCP_SIZES = struct.Struct("!II")
"""A TCP request's bytes 8-15: its own length and the length of the response it asks for."""
FILLER_BASE = 0xF1F1_0000_0000_0000
"""Filler datagrams carry FILLER_BASE + i as their first 8 bytes (never a request's sequence number)."""
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
MSG_WAITFORONE = 0x10000
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", 35)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line and flush it (readers wait on these lines)."""
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def family_of(address: str) -> socket.AddressFamily:
    """AF_INET6 for an address with a colon, AF_INET otherwise."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def payload(seq: int, size: int) -> bytes:
    """``size`` bytes (at least 8): the sequence number big-endian, then padding."""
    return SEQ.pack(seq) + b"m" * max(0, size - SEQ.size)


class _Pacer:
    """Spaces events ``1/rate`` seconds apart (rate 0: no spacing)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if self.interval:
            delay = self.next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.next = max(self.next + self.interval, time.monotonic() - self.interval)


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, handler)


# -- UDP ------------------------------------------------------------------------------------------

def prefork(workers: int, port: int) -> bool:
    """Fork ``workers`` children that serve the sockets bound so far (as pre-forking servers do);
    the parent reports them and waits. True in a child (which serves), never returns in the parent."""
    if workers <= 0:
        return True
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            return True
        children.append(pid)
    emit({"ready": True, "port": port, "workers": children})
    for pid in children:
        os.waitpid(pid, 0)
    os._exit(0)


def udp_server(bind: str, port: int, sink_port: int | None, workers: int = 0, log: bool = False) -> None:
    """Echo every datagram on ``port`` back to its sender; discard what arrives on ``sink_port``.
    With ``workers``, that many forked children serve the socket and the parent only waits. With
    ``log``, print which process read each echoed datagram (its sequence number)."""
    fam = family_of(bind)
    echo = socket.socket(fam, socket.SOCK_DGRAM)
    echo.bind((bind, port))
    sockets = [echo]
    if sink_port is not None:
        sink = socket.socket(fam, socket.SOCK_DGRAM)
        sink.bind((bind, sink_port))
        sockets.append(sink)
    if workers:
        prefork(workers, echo.getsockname()[1])
    sel = selectors.DefaultSelector()
    for s in sockets:
        sel.register(s, selectors.EVENT_READ, s)
    if not workers:
        emit({"ready": True, "port": echo.getsockname()[1]})
    while True:
        for key, _ in sel.select():
            ready: socket.socket = key.data
            data, _anc, _flags, peer = ready.recvmsg(65535)
            if ready is echo:
                echo.sendto(data, peer)
                if log:
                    emit({"read": SEQ.unpack_from(data)[0], "pid": os.getpid()})


def udp_client(dests: Sequence[str], port: int, count: int, rate: float, size: int, sleep_ms: float,
               seq_base: int, timeout: float, filler_count: int, filler_bytes: int,
               filler_port: int | None) -> int:
    """Send ``count`` requests with sendto (to ``dests`` in turn), read each reply with recvmsg.

    Prints one line per request. With ``filler_count``, that many datagrams of ``filler_bytes`` go
    to ``filler_port`` from another socket just before each request.
    """
    fam = family_of(dests[0])
    if any(family_of(d) != fam for d in dests):
        raise OSError("all destinations must be of one address family")
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    filler = socket.socket(fam, socket.SOCK_DGRAM) if filler_count else None
    pacer = _Pacer(rate)
    received = 0
    for i in range(count):
        pacer.wait()
        seq = seq_base + i
        dest = dests[i % len(dests)]
        record: dict[str, Any] = {"seq": seq, "dest": dest}
        if filler is not None:
            record["filler_start_ns"] = time.monotonic_ns()
            for k in range(filler_count):
                filler.sendto(payload(FILLER_BASE + k, filler_bytes), (dest, filler_port or port))
                if k == 0:
                    record["filler_first_end_ns"] = time.monotonic_ns()
            record["filler_end_ns"] = time.monotonic_ns()
        data = payload(seq, size)
        record["send_start_ns"] = time.monotonic_ns()
        sock.sendto(data, (dest, port))
        record["send_end_ns"] = time.monotonic_ns()
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        while True:
            record["recv_start_ns"] = time.monotonic_ns()
            try:
                reply, _anc, _flags, _peer = sock.recvmsg(65535)
            except TimeoutError:
                record["lost"] = True
                break
            record["recv_end_ns"] = time.monotonic_ns()
            if reply[:SEQ.size] == data[:SEQ.size]:
                record["rtt_ns"] = record["recv_end_ns"] - record["send_start_ns"]
                received += 1
                break
        record["real_offset_ns"] = time.time_ns() - time.monotonic_ns()
        emit(record)
    emit({"done": {"sent": count, "received": received}})
    return 0 if received == count else 1


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def _mmsghdrs(buffers: Sequence[Any], lengths: Sequence[int]) -> Any:
    """An array of struct mmsghdr, one per buffer, each with one iovec of that buffer's length."""
    messages = (_Mmsghdr * len(buffers))()
    for message, buf, length in zip(messages, buffers, lengths, strict=True):
        message.hdr.iov = ctypes.pointer(_Iovec(ctypes.cast(buf, ctypes.c_void_p), length))
        message.hdr.iovlen = 1
    return messages


def sendmmsg(sock: socket.socket, datagrams: Sequence[bytes]) -> int:
    """Send ``datagrams`` on a connected socket with one sendmmsg(2) call; how many were sent."""
    buffers = [ctypes.create_string_buffer(d, len(d)) for d in datagrams]
    messages = _mmsghdrs(buffers, [len(d) for d in datagrams])
    sent = int(ctypes.CDLL(None, use_errno=True).sendmmsg(sock.fileno(), messages, len(datagrams), 0))
    if sent < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"sendmmsg: {os.strerror(code)}")
    return sent


def recvmmsg(sock: socket.socket, vlen: int, size: int) -> list[bytes]:
    """Up to ``vlen`` datagrams from one recvmmsg(2) call that waits for the first only
    (MSG_WAITFORONE); TimeoutError when the socket's receive timeout passes first."""
    buffers = [ctypes.create_string_buffer(size) for _ in range(vlen)]
    messages = _mmsghdrs(buffers, [size] * vlen)
    got = int(ctypes.CDLL(None, use_errno=True).recvmmsg(sock.fileno(), messages, vlen, MSG_WAITFORONE, None))
    if got < 0:
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise TimeoutError("recvmmsg: timed out")
        raise OSError(code, f"recvmmsg: {os.strerror(code)}")
    return [buffers[i].raw[:messages[i].len] for i in range(got)]


def udp_batch_client(dest: str, port: int, count: int, batch: int, rate: float, size: int,
                     seq_base: int, timeout: float, use_recvmmsg: bool) -> int:
    """``count`` rounds of ``batch`` requests sent with one sendmmsg call (as glibc's resolver sends
    its A and AAAA queries together), each round's replies read with recvmsg, or with recvmmsg
    calls that each return what has arrived once one reply has.

    Prints one line per request: its seq, the round's send start and, once its reply came, rtt_ns.
    """
    sock = socket.socket(family_of(dest), socket.SOCK_DGRAM)
    # a blocking socket with a receive timeout, so that recvmmsg waits as recvmsg does
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("@ll", int(timeout), int(timeout % 1 * 1_000_000)))
    sock.connect((dest, port))
    pacer = _Pacer(rate)
    received = 0
    for r in range(count):
        pacer.wait()
        seqs = [seq_base + r * batch + j for j in range(batch)]
        start = time.monotonic_ns()
        sent = sendmmsg(sock, [payload(seq, size) for seq in seqs])
        waiting = set(seqs[:sent])
        replies: dict[int, int] = {}
        while waiting:
            try:
                got = recvmmsg(sock, len(waiting), 65535) if use_recvmmsg else [sock.recvmsg(65535)[0]]
            except (TimeoutError, BlockingIOError):
                break
            now = time.monotonic_ns()
            for reply in got:
                seq = SEQ.unpack_from(reply)[0]
                if seq in waiting:
                    waiting.discard(seq)
                    replies[seq] = now - start
        received += len(replies)
        for seq in seqs:
            record: dict[str, Any] = {"seq": seq, "send_start_ns": start}
            if seq in replies:
                record["rtt_ns"] = replies[seq]
            else:
                record["lost"] = True
            emit(record)
    emit({"done": {"sent": count * batch, "received": received}})
    return 0 if received == count * batch else 1


def udp_flood(dest: str, port: int, duration: float, size: int, rate: float) -> int:
    """Send datagrams to ``dest:port`` for ``duration`` seconds (as fast as possible at rate 0)."""
    sock = socket.socket(family_of(dest), socket.SOCK_DGRAM)
    pacer = _Pacer(rate)
    end = time.monotonic() + duration
    sent = errors = 0
    while time.monotonic() < end:
        pacer.wait()
        try:
            sock.sendto(payload(sent, size), (dest, port))
            sent += 1
        except OSError:
            errors += 1
    emit({"done": {"sent": sent, "errors": errors}})
    return 0


# -- TCP ------------------------------------------------------------------------------------------

def _recv_exact(sock: socket.socket, size: int, use_read: bool = False) -> bytes | None:
    """``size`` bytes read with recvmsg(2), or with read(2) (as Go and Java read sockets); None at EOF."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        if use_read:
            if not select.select([sock], [], [], sock.gettimeout())[0]:
                raise TimeoutError("read: timed out")
            data = os.read(sock.fileno(), size - got)
        else:
            data = sock.recvmsg(size - got)[0]
        if not data:
            return None
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _write_all(sock: socket.socket, data: bytes) -> None:
    """All of ``data`` written with write(2)."""
    view = memoryview(data)
    while view:
        if not select.select([], [sock], [], sock.gettimeout())[1]:
            raise TimeoutError("write: timed out")
        view = view[os.write(sock.fileno(), view):]


def tcp_request(seq: int, request_bytes: int, response_bytes: int) -> bytes:
    """A TCP request: seq, its own length and the response length asked for, then padding."""
    head = SEQ.pack(seq) + TCP_SIZES.pack(request_bytes, response_bytes)
    return head + b"m" * max(0, request_bytes - len(head))


def tcp_server(bind: str, port: int, workers: int = 0) -> None:
    """Answer each request with as many bytes as it asks for, starting with its sequence number.
    With ``workers``, that many forked children accept connections and the parent only waits."""
    server = socket.socket(family_of(bind), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((bind, port))
    server.listen(8)
    if workers:
        prefork(workers, server.getsockname()[1])
    else:
        emit({"ready": True, "port": server.getsockname()[1]})
    head = SEQ.size + TCP_SIZES.size
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                while (request := _recv_exact(conn, head)) is not None:
                    seq = SEQ.unpack_from(request)[0]
                    request_bytes, response_bytes = TCP_SIZES.unpack_from(request, SEQ.size)
                    if request_bytes > head and _recv_exact(conn, request_bytes - head) is None:
                        break
                    conn.sendall(payload(seq, response_bytes))
            except OSError:
                continue


def tcp_client(dest: str, port: int, count: int, rate: float, request_bytes: int, response_bytes: int,
               seq_base: int, timeout: float, file_calls: bool = False) -> int:
    """Connect, then send ``count`` requests and read each response; print one line per request.

    The socket calls are sendto and recvmsg, or with ``file_calls`` write and read (as Go, Java
    and Node.js use their sockets)."""
    sock = socket.create_connection((dest, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pacer = _Pacer(rate)
    received = 0
    for i in range(count):
        pacer.wait()
        seq = seq_base + i
        record: dict[str, Any] = {"seq": seq, "send_start_ns": time.monotonic_ns()}
        request = tcp_request(seq, request_bytes, response_bytes)
        if file_calls:
            _write_all(sock, request)
        else:
            sock.sendall(request)
        record["send_end_ns"] = record["recv_start_ns"] = time.monotonic_ns()
        try:
            response = _recv_exact(sock, response_bytes, file_calls)
        except TimeoutError:
            response = None
        record["recv_end_ns"] = time.monotonic_ns()
        if response is None:
            record["lost"] = True
            emit(record)
            break
        record["rtt_ns"] = record["recv_end_ns"] - record["send_start_ns"]
        record["real_offset_ns"] = time.time_ns() - time.monotonic_ns()
        received += 1
        emit(record)
    sock.close()
    emit({"done": {"sent": count, "received": received}})
    return 0 if received == count else 1


# -- capture --------------------------------------------------------------------------------------

def _transport(proto: int, l4: bytes, l4_len: int) -> dict[str, Any]:
    if proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        out: dict[str, Any] = {"proto": "udp", "sport": sport, "dport": dport}
        if len(l4) >= 16:
            out["payload8"] = SEQ.unpack_from(l4, 8)[0]
        return out
    if proto == 6 and len(l4) >= 20:
        sport, dport, seq = struct.unpack_from("!HHI", l4)
        data_offset = (l4[12] >> 4) * 4
        return {"proto": "tcp", "sport": sport, "dport": dport, "tcp_seq": seq,
                "data_len": max(0, l4_len - data_offset)}
    if proto in (1, 58) and len(l4) >= 8:
        kind, _code, _sum, ident, seq = struct.unpack_from("!BBHHH", l4)
        return {"proto": "icmp" if proto == 1 else "icmp6", "type": kind, "id": ident, "seq": seq}
    return {"proto": proto}


def parse_frame(frame: bytes) -> dict[str, Any]:
    """The addresses and transport fields of an Ethernet frame carrying IPv4 or IPv6.

    ``frame`` may be truncated after the headers: lengths come from the IP header.
    """
    if len(frame) < 14:
        return {}
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == 0x0800 and len(ip) >= 20:
        header = (ip[0] & 0x0F) * 4
        fields = {"src": socket.inet_ntop(socket.AF_INET, ip[12:16]),
                  "dst": socket.inet_ntop(socket.AF_INET, ip[16:20])}
        total = struct.unpack_from("!H", ip, 2)[0]
        return fields | _transport(ip[9], ip[header:], total - header)
    if ethertype == 0x86DD and len(ip) >= 40:
        fields = {"src": socket.inet_ntop(socket.AF_INET6, ip[8:24]),
                  "dst": socket.inet_ntop(socket.AF_INET6, ip[24:40])}
        return fields | _transport(ip[6], ip[40:], struct.unpack_from("!H", ip, 4)[0])
    return {"ethertype": ethertype}


def capture(dev: str, duration: float, count: int, ports: Sequence[int]) -> int:
    """Print each frame seen on ``dev`` with its kernel receive/transmit timestamp (CLOCK_REALTIME)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((dev, 0))
    sock.settimeout(0.2)
    emit({"ready": True, "dev": dev})
    end = time.monotonic() + duration
    seen = 0
    while seen < count and time.monotonic() < end:
        try:
            frame, ancillary, _flags, address = sock.recvmsg(256, socket.CMSG_SPACE(16))
        except TimeoutError:
            continue
        fields = parse_frame(frame)
        if ports and not {fields.get("sport"), fields.get("dport")} & set(ports):
            continue
        stamp = next((data for level, kind, data in ancillary
                      if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS), None)
        if stamp is None:
            continue
        sec, nsec = struct.unpack("qq", stamp[:16])
        emit({"real_ns": sec * 1_000_000_000 + nsec, "outgoing": address[2] == PACKET_OUTGOING} | fields)
        seen += 1
    emit({"done": {"frames": seen}})
    return 0


# -- command line ---------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mace_lab.traffic",
                                     description="Traffic and capture for Mace's lab topologies.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("udp-server", help="UDP echo server")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sink-port", type=int, help="also bind this port and discard what arrives")
    p.add_argument("--workers", type=int, default=0, help="pre-fork this many children to serve")
    p.add_argument("--log", action="store_true", help="print the process that read each datagram")

    p = sub.add_parser("udp-batch-client",
                       help="UDP requests sent in batches with sendmmsg, replies read with recvmsg(mmsg)")
    p.add_argument("--dest", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10, help="rounds")
    p.add_argument("--batch", type=int, default=2, help="requests per sendmmsg call")
    p.add_argument("--recvmmsg", action="store_true", help="read the replies with recvmmsg")
    p.add_argument("--rate", type=float, default=10.0, help="rounds per second (0: back to back)")
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--seq-base", type=int, default=1)
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("udp-client", help="UDP request/response client (sendto/recvmsg)")
    p.add_argument("--dest", required=True, action="append", help="repeat to alternate destinations")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--rate", type=float, default=10.0, help="requests per second (0: back to back)")
    p.add_argument("--payload", type=int, default=64, help="bytes per datagram (at least 8)")
    p.add_argument("--sleep-ms", type=float, default=0.0, help="sleep this long after sendto, before recvmsg")
    p.add_argument("--seq-base", type=int, default=1)
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each reply")
    p.add_argument("--filler-count", type=int, default=0, help="datagrams sent just before each request")
    p.add_argument("--filler-bytes", type=int, default=1000)
    p.add_argument("--filler-port", type=int, help="where the filler goes (default: --port)")

    p = sub.add_parser("udp-flood", help="send datagrams as fast as possible (or at --rate)")
    p.add_argument("--dest", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.0)

    p = sub.add_parser("tcp-server", help="TCP request/response server (answers with the size asked for)")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=0, help="pre-fork this many children to accept")

    p = sub.add_parser("tcp-client", help="TCP request/response client")
    p.add_argument("--dest", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--request-bytes", type=int, default=64)
    p.add_argument("--response-bytes", type=int, default=64)
    p.add_argument("--seq-base", type=int, default=1)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--file-calls", action="store_true",
                   help="write(2) the requests and read(2) the responses, not sendto(2) and recvmsg(2)")

    p = sub.add_parser("capture", help="packet-socket timestamps of the frames on one device")
    p.add_argument("--dev", required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--port", type=int, action="append", default=[],
                   help="only UDP or TCP frames to or from this port (repeat for several)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mace_lab.traffic``."""
    args = _parser().parse_args(argv)
    _stop_on_sigterm()
    try:
        if args.command == "udp-server":
            udp_server(args.bind, args.port, args.sink_port, args.workers, args.log)
        elif args.command == "udp-client":
            return udp_client(args.dest, args.port, args.count, args.rate, max(8, args.payload),
                              args.sleep_ms, args.seq_base, args.timeout, args.filler_count,
                              max(8, args.filler_bytes), args.filler_port)
        elif args.command == "udp-batch-client":
            return udp_batch_client(args.dest, args.port, args.count, args.batch, args.rate,
                                    max(8, args.payload), args.seq_base, args.timeout, args.recvmmsg)
        elif args.command == "udp-flood":
            return udp_flood(args.dest, args.port, args.duration, max(8, args.payload), args.rate)
        elif args.command == "tcp-server":
            tcp_server(args.bind, args.port, args.workers)
        elif args.command == "tcp-client":
            return tcp_client(args.dest, args.port, args.count, args.rate, max(16, args.request_bytes),
                              max(8, args.response_bytes), args.seq_base, args.timeout, args.file_calls)
        elif args.command == "capture":
            return capture(args.dev, args.duration, args.count, args.port)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"traffic {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
