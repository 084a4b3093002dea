"""Durability under kill -9: every message that got a 250 is delivered after
restarts. Duplicates (delivered twice because a crash fell between the
sink's 250 and Postern recording it) are allowed but counted and reported."""

import random
import smtplib
import ssl
import threading
import time
import uuid


ROUNDS = 5
CLIENTS = 8


def client_loop(postern, stop, acked, lock, use_submission):
    ctx = ssl.create_default_context(cafile=postern.cert)
    while not stop.is_set():
        try:
            if use_submission:
                s = smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=10)
                s.starttls(context=ctx)
                s.login("apikey", postern.admin_key)
                rcpt = "rcpt@example.net"
            else:
                s = smtplib.SMTP("127.0.0.1", postern.ports["mx"], timeout=10)
                rcpt = "user@relay.test"
            with s:
                for _ in range(5):
                    if stop.is_set():
                        break
                    token = uuid.uuid4().hex
                    body = f"Subject: crash {token}\r\n\r\n{token}\r\n".encode()
                    s.sendmail("sender@example.org", [rcpt], body)
                    # sendmail returned: the server said 250 to the end of DATA.
                    with lock:
                        acked.add(token)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def test_kill9_loses_no_acknowledged_message(postern, sink):
    rng = random.Random(20261123)
    stop = threading.Event()
    acked, lock = set(), threading.Lock()
    threads = [
        threading.Thread(target=client_loop, args=(postern, stop, acked, lock, i % 2 == 0), daemon=True)
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    # The sleeps below are not synchronisation: they choose, at random,
    # how long the clients load the server before each kill -9 and how
    # soon it comes back, so the kills land at varied points of intake.
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.3, 1.2))
        postern.kill9()
        time.sleep(rng.uniform(0.0, 0.3))
        postern.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with lock:
        acked = set(acked)
    assert len(acked) > 50, f"too little load to mean anything: {len(acked)}"

    deadline = time.time() + 90
    while time.time() < deadline:
        delivered = [m["data"].split(b"\r\n\r\n", 1)[1].strip().decode() for m in sink.messages]
        if acked <= set(delivered):
            break
        time.sleep(0.2)
    delivered = [m["data"].split(b"\r\n\r\n", 1)[1].strip().decode() for m in sink.messages]
    lost = acked - set(delivered)
    duplicates = len(delivered) - len(set(delivered))
    print(
        f"\ncrash test: {ROUNDS} kill -9 rounds, {len(acked)} messages acknowledged, "
        f"{len(set(delivered) & acked)} delivered, {len(lost)} lost, {duplicates} duplicates"
    )
    assert not lost, f"{len(lost)} acknowledged messages lost"
