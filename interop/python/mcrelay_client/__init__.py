"""Python client for the mcrelay wire protocol, versions 1 and 2.

>>> from mcrelay_client import Client, events
>>> with Client(server=("127.0.0.1", 5007)) as c:
...     my_id = c.connect()
...     c.send(b"hello")
...     ev = c.recv(timeout=1.0)     # an events.* instance or None

Modules: :mod:`.protocol` (framing, fragments, replay window, v2 handshake
and GROUP_DATA encodings; no I/O), :mod:`.group` (the group member: keys,
ratchet, signature and GSEQ checks; no I/O),
:mod:`.events` (what :meth:`Client.recv` returns), :mod:`.errors`
(what :class:`Client` raises).
"""

from . import errors, events, group, protocol
from .client import Client

__version__ = "0.2.0"
__all__ = ["Client", "errors", "events", "group", "protocol"]
