"""The Argon2 pool bound over real SMTP: with `auth.password_hash_parallelism
= 1`, password logins that cannot get the one hashing slot within 2 s get
`454 4.7.0` (RFC 4954 §6: a temporary failure, try again) instead of
queueing for as long as the attempts ahead of them take."""

import base64
import subprocess
import smtplib
import ssl
import tempfile
import threading
import time
import urllib.request

import pytest

from conftest import BIN, Postern

PASSWORD = "violet-anchor-tundra-42"
CLIENTS = 16
# password.rs MAX_WAIT.
MAX_WAIT = 2.0


@pytest.fixture
def one_slot(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config="[auth]\npassword_hash_parallelism = 1\n").start()
        p.read_admin_key()
        p.cli("account", "create", "pooled")
        subprocess.run(
            [str(BIN), "--config", str(p.config_path), "account", "password", "pooled"],
            input=PASSWORD + "\n", text=True, check=True, capture_output=True,
        )
        p.cli("account", "password-auth", "pooled", "on")
        yield p
        p.stop()


def login(p, start=None):
    """(code, seconds from AUTH to its reply); the session is opened first,
    and the AUTH waits for `start` when given, so all go out together."""
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=60) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.ehlo("client.test")
        if start is not None:
            start.wait()
        token = base64.b64encode(f"\0pooled\0{PASSWORD}".encode()).decode()
        t0 = time.monotonic()
        code, text = s.docmd("AUTH", "PLAIN " + token)
        return code, time.monotonic() - t0, text


def busy_count(p):
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{p.ports['http']}/metrics", timeout=10).read().decode()
    for line in metrics.splitlines():
        if line.startswith("postern_password_hash_busy_total"):
            return int(float(line.split()[-1]))
    return 0


def test_a_full_hashing_pool_answers_454_after_two_seconds(one_slot):
    p = one_slot
    # One login alone: how long a hash takes here.
    code, alone, _ = login(p)
    assert code == 235
    start = threading.Barrier(CLIENTS)
    results = [None] * CLIENTS

    def run(i):
        results[i] = login(p, start)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results), results
    codes = sorted(r[0] for r in results)
    print(f"\none hash alone: {alone:.2f}s; {CLIENTS} at once: {codes}, "
          f"times {[round(r[1], 2) for r in sorted(results, key=lambda r: r[1])]}")
    assert set(codes) <= {235, 454}, results
    # The pool did work (someone got the slot), and the queue behind it,
    # 16 hashes long, was cut off rather than served in turn.
    assert 235 in codes and 454 in codes, results
    for code, took, text in results:
        if code == 454:
            assert text.startswith(b"4.7.0"), text
            # Refused after the 2 s wait for a slot, not at once and not
            # after the queue ahead had drained (7 s allows a loaded machine).
            assert MAX_WAIT - 0.05 <= took < MAX_WAIT + 5, results
    # Every 454 came from the pool being busy, none from anything else.
    assert busy_count(p) == codes.count(454)
    # The pool is free again afterwards.
    assert login(p)[0] == 235
