"""Command line: ``python3 -m mcrelay_client {listen,send} --server HOST:PORT ...``.

``--server`` takes an IPv6 address in brackets (``[::1]:5007``); ``--group``
an IPv4 or IPv6 group, with ``--iface`` (for IPv6 a name, an index or an
address) and ``--ttl`` (TTL or hop limit, 0 by default: this host only).
Protocol v2 is spoken to a relay that offers it (``--v1`` forces v1); group
mode is asked for with ``--group`` and not by unicast, unless
``--group-mode`` or ``--no-group-mode`` (alias ``--no-group``) says otherwise.

``listen`` prints one line per event and flushes after each:
``[id] text``, ``* id joined``, ``* id left (reason)``, ``* server closing``,
``* session lost (REASON); reconnecting`` and ``* reconnected as ID`` (a
REJECT, which anyone can forge, only makes it handshake again while the
session keeps working), ``* not allowed to publish`` (REJECT 5) and
``* no group datagrams on ADDR; served per recipient``. On stderr it says
``connected as ID, protocol vN, MODE, server key FP`` (MODE: ``group mode
(downlink ADDR)``, ``per recipient``) and, on leaving, the downlink's
counters. It sends KEEPALIVE periodically, says BYE on Ctrl-C/SIGTERM and
exits 0 after ``* server closing``; it exits 1 when a new handshake is
refused or the relay revoked its credential. ``send`` connects, sends MESSAGE, says BYE and
exits 0. Errors print one line to stderr and exit 1.
"""

import argparse
import re
import signal
import sys
import time

from . import errors, events
from .client import Client


def _server(text: str):
    """``HOST:PORT`` or ``[IPV6]:PORT`` (``[fe80::1%eth0]:5007``) to ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT or [IPV6]:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError("an IPv6 address goes in brackets: [::1]:5007")
    return host, int(port)


def _ttl(text: str) -> int:
    if not text.isdigit() or int(text) > 255:
        raise argparse.ArgumentTypeError("expected 0..255")
    return int(text)


def _client(args) -> Client:
    token = None
    if args.token_file:
        with open(args.token_file, "rb") as f:
            token = f.read().rstrip(b"\r\n")
    return Client(server=args.server, group=args.group, iface=args.iface, token=token,
                  pin=args.pin, max_datagram=args.max_datagram, timeout=args.timeout,
                  ttl=args.ttl, version=1 if args.v1 else 2, group_mode=args.group_mode)


_LOST = {
    1: "the server no longer knows this client",
    2: "the server reports an authentication failure",
}


_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")


def display_sender(sender: str) -> str:
    """A named client (``alice@10.0.0.5:40000``, v2 §5) by its name,
    anyone else by its whole id."""
    name, at, _ = sender.partition("@")
    return name if at and _NAME.fullmatch(name) else sender


def _format(ev) -> str:
    if isinstance(ev, events.Message):
        return f"[{display_sender(ev.sender)}] {ev.body.decode('utf-8', 'replace')}"
    if isinstance(ev, events.PeerJoined):
        return f"* {ev.id} joined"
    if isinstance(ev, events.PeerLeft):
        return f"* {ev.id} left ({ev.reason_name})"
    if isinstance(ev, events.ServerClosing):
        return "* server closing"
    if isinstance(ev, events.Rejected):
        return f"* session lost ({_LOST.get(ev.reason, ev.reason_name)}); reconnecting"
    if isinstance(ev, events.Reconnected):
        return f"* reconnected as {ev.id}"
    if isinstance(ev, events.Forbidden):
        return "* not allowed to publish (the relay dropped the message)"
    if isinstance(ev, events.DownlinkSilent):
        return f"* no group datagrams on {ev.addr}; served per recipient"
    return f"* {ev!r}"


def describe(c: Client) -> str:
    """``protocol vN, MODE``: how the session is served."""
    if c.mode == "group":
        how = f"group mode (downlink {c.downlink})"
    else:
        how = "per recipient"
    return f"protocol v{c.version}, {how}"


def _stats_line(c: Client) -> str:
    stats = " ".join(f"{k}={v}" for k, v in c.downlink_stats.items())
    return f"downlink: {stats}"


def _listen(c: Client, keepalive: float) -> int:
    c.connect()
    print(f"connected as {c.client_id}, {describe(c)}, server key {c.fingerprint}",
          file=sys.stderr, flush=True)
    next_keepalive = time.monotonic() + keepalive
    try:
        while True:
            ev = c.recv(max(0.0, next_keepalive - time.monotonic()))
            if time.monotonic() >= next_keepalive:
                if c.connected:  # not while a lost session is handshaking again
                    c.keepalive()
                next_keepalive = time.monotonic() + keepalive
            if ev is None:
                continue
            if isinstance(ev, events.Revoked):
                print(f"error: the relay revoked the credential of {ev.id}",
                      file=sys.stderr, flush=True)
                return 1
            print(_format(ev), flush=True)
            if isinstance(ev, events.Reconnected):
                print(f"reconnected as {ev.id}, {describe(c)}", file=sys.stderr, flush=True)
            if isinstance(ev, events.ServerClosing):
                return 0
    except KeyboardInterrupt:
        if c.connected:
            c.bye()
        return 0
    finally:
        print(_stats_line(c), file=sys.stderr, flush=True)


def _send(c: Client, message: str) -> int:
    c.connect()
    c.send(message.encode())
    c.bye()
    return 0


def main(argv=None) -> int:
    """Runs the CLI; returns the exit status."""
    p = argparse.ArgumentParser(prog="python3 -m mcrelay_client", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("listen", "send"):
        s = sub.add_parser(name)
        s.add_argument("--server", type=_server, required=True, metavar="HOST:PORT",
                       help="the relay, HOST:PORT or [IPV6]:PORT (with --group, only PORT counts)")
        s.add_argument("--group", help="send by multicast to GROUP:PORT instead (IPv4 or IPv6)")
        s.add_argument("--iface", metavar="NAME|ADDR|INDEX",
                       help="interface of the group: an address or a name, for IPv6 also an"
                            " index (default: 127.0.0.1 for IPv4, the kernel's choice for IPv6)")
        s.add_argument("--ttl", type=_ttl, default=0, metavar="N",
                       help="multicast TTL or IPv6 hop limit, 0..255 (default 0: this host only)")
        s.add_argument("--token-file", metavar="F", help="file holding the access token")
        s.add_argument("--pin", metavar="HEX", help="expected SHA-256 of the server key (hex)")
        s.add_argument("--max-datagram", type=int, default=1200)
        s.add_argument("--timeout", type=float, default=5.0, help="handshake timeout, seconds")
        s.add_argument("--v1", action="store_true",
                       help="speak protocol v1 even to a v2 relay (no group mode, no raw tokens)")
        mode = s.add_mutually_exclusive_group()
        mode.add_argument("--group-mode", dest="group_mode", action="store_true", default=None,
                          help="ask a v2 relay for group mode (the default with --group):"
                               " one signed multicast copy of each message for all members")
        mode.add_argument("--no-group-mode", "--no-group", dest="group_mode",
                          action="store_false",
                          help="do not ask for group mode: every message sent to this client"
                               " alone (the default with --server unicast)")
        if name == "listen":
            s.add_argument("--keepalive", type=float, default=20.0, help="seconds between KEEPALIVEs")
        else:
            s.add_argument("message")
    args = p.parse_args(argv)
    # SIGTERM leaves like Ctrl-C does (with a BYE).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with _client(args) as c:
            if args.cmd == "listen":
                return _listen(c, args.keepalive)
            return _send(c, args.message)
    except (errors.McrelayError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
