"""The HTTP listener resists slow clients: a request head that never ends,
an idle kept-alive connection and a body that trickles are all cut off at
their deadline, and one address cannot hold more than its share of
connections. Raw sockets play the slow client; each check says how long
it waits."""

import socket
import tempfile
import time

import pytest

from conftest import Postern, free_port, wait_until

HEADER_TIMEOUT = 1.0
REQUEST_TIMEOUT = 2.0
PER_IP = 4


@pytest.fixture
def limited(sink):
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as d:
        p = Postern(
            d,
            sink.port,
            http_config=f'header_timeout = "1s"\nrequest_timeout = "2s"\nmax_connections_per_ip = {PER_IP}\nmetrics_address = "127.0.0.1:{metrics_port}"',
        ).start()
        p.ports["metrics"] = metrics_port
        p.read_admin_key()
        yield p
        p.stop()


def connect(p, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", p.ports["http"]), timeout=10, source_address=(source, 0))
    return s


def closed_after(s, limit):
    """Seconds until the server closed `s` (reading whatever it sent), or
    None if it was still open after `limit` seconds."""
    start = time.monotonic()
    s.settimeout(0.2)
    data = b""
    while time.monotonic() - start < limit:
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return time.monotonic() - start, data
        if not chunk:
            return time.monotonic() - start, data
        data += chunk
    return None, data


def test_a_request_head_that_never_ends_is_cut_off(limited):
    s = connect(limited)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: postern\r\nX-Slow: ")
    took, _ = closed_after(s, HEADER_TIMEOUT + 4)
    assert took is not None, "a half-sent request head kept the connection open for 5 s"
    assert took >= HEADER_TIMEOUT * 0.8, f"closed too early ({took:.2f} s)"


def test_an_idle_kept_alive_connection_is_closed(limited):
    s = connect(limited)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: postern\r\n\r\n")
    s.settimeout(5)
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 200"), first
    took, _ = closed_after(s, HEADER_TIMEOUT + 4)
    assert took is not None, "an idle kept-alive connection stayed open for 5 s"


def test_a_trickling_body_gets_408(limited):
    s = connect(limited)
    s.sendall(
        b"POST /v3/mail/send HTTP/1.1\r\nHost: postern\r\n"
        + f"Authorization: Bearer {limited.admin_key}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"personalizations\": "
    )
    took, data = closed_after(s, REQUEST_TIMEOUT + 5)
    assert took is not None, "a stalled body upload kept the request open for 7 s"
    assert data.startswith(b"HTTP/1.1 408"), data[:200]


def test_one_address_cannot_take_every_connection(limited):
    held = [connect(limited) for _ in range(PER_IP)]
    for s in held:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: postern\r\n")  # half a head: kept waiting
    extra = connect(limited)
    took, _ = closed_after(extra, 0.9)
    assert took is not None and took < HEADER_TIMEOUT, "a connection over the per-address cap was served"
    # Another address is still served at once.
    other = connect(limited, source="127.0.0.2")
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: postern\r\nConnection: close\r\n\r\n")
    other.settimeout(5)
    assert other.recv(4096).startswith(b"HTTP/1.1 200")
    # And /metrics lives only on its own listener when one is configured.
    m = connect(limited, source="127.0.0.3")
    m.sendall(b"GET /metrics HTTP/1.1\r\nHost: postern\r\nConnection: close\r\n\r\n")
    m.settimeout(5)
    assert m.recv(4096).startswith(b"HTTP/1.1 404")
    with socket.create_connection(("127.0.0.1", limited.ports["metrics"]), timeout=10) as m:
        m.sendall(b"GET /metrics HTTP/1.1\r\nHost: postern\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := m.recv(65536):
            body += chunk
    assert body.startswith(b"HTTP/1.1 200") and b"postern_http_connections_refused_total" in body, body[:300]


def test_the_listener_holds_at_most_max_connections_in_all(sink):
    """http.max_connections caps connections from all addresses together:
    with three held open (each from its own address, so the per-address cap
    plays no part), a fourth is closed at once; when one of the three
    leaves, a new connection is served."""
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, http_config='header_timeout = "10s"\nmax_connections = 3').start()
        try:
            p.read_admin_key()
            held = [connect(p, source=f"127.0.3.{i}") for i in (1, 2, 3)]
            for s in held:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: postern\r\n")  # half a head: kept waiting
            # Well within the 10 s header_timeout: a close here is the cap's.
            took, _ = closed_after(connect(p, source="127.0.3.9"), 3)
            assert took is not None, "a fourth connection was kept open for 3 s"
            held[0].close()

            def served():
                s = connect(p, source="127.0.3.10")
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: postern\r\nConnection: close\r\n\r\n")
                s.settimeout(5)
                try:
                    return s.recv(4096).startswith(b"HTTP/1.1 200")
                except OSError:
                    return False
                finally:
                    s.close()
            # The slot comes back once the server has seen the close; polled.
            wait_until(served, timeout=10, what="a connection served after one of three left")
            for s in held[1:]:
                s.close()
        finally:
            p.stop()
