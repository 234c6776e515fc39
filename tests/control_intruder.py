"""Another local account against a site's control endpoint (stdlib only: it runs as uid 65534
under whatever Python that account can execute). Run by tests/test_control_owner.py.

    python control_intruder.py PORT CONTROL_FILE HOLD

1. Tries to read CONTROL_FILE, then GETs every data page without a token and with a guessed
   one; prints one JSON line: {"control_file": "read" | "denied", "answers": [...]}.
2. With HOLD > 0, opens HOLD connections that never send a byte, re-opens each one the
   endpoint closes, prints "holding" once all HOLD are open, and keeps at it until stdin
   closes.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys

PATHS = ("/status", "/metrics", "/dashboard.json")


def get(port: int, path: str, token: str | None) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        sock.sendall((head + "\r\n").encode())
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:
            pass
        return out.decode("latin-1")


def main() -> None:
    port, control_file, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    try:
        with open(control_file, encoding="utf-8") as f:
            f.read()
        control = "read"
    except OSError:
        control = "denied"
    answers = [get(port, p, t) for p in PATHS for t in (None, "guessed-token", "")]
    print(json.dumps({"control_file": control, "answers": answers}), flush=True)
    if hold == 0:
        return

    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")

    def open_one() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, "held")

    for _ in range(hold):
        open_one()
    print("holding", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                return
            sock = key.fileobj
            try:
                data = sock.recv(65536)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:  # closed by the endpoint: take the slot back at once
                sel.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                open_one()


if __name__ == "__main__":
    main()
