"""1,000 wrong passwords from one address end in a block, while a good
client on another network keeps sending. Prints the good client's latency
during the attack. Spraying and stuffing are detected and audited."""

import base64
import smtplib
import ssl
import statistics
import threading
import time

from conftest import auth_plain

ATTEMPTS = 1000
ATTACKERS = 8


def attacker(postern, counter, lock, outcomes, stop):
    ctx = ssl.create_default_context(cafile=postern.cert)
    while not stop.is_set():
        with lock:
            if counter[0] >= ATTEMPTS:
                return
        try:
            with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
                s.starttls(context=ctx)
                s.ehlo("attacker.test")
                for _ in range(3):
                    with lock:
                        if counter[0] >= ATTEMPTS:
                            return
                        counter[0] += 1
                    token = base64.b64encode(b"\0victim\0not-the-password-42").decode()
                    code, _ = s.docmd("AUTH", "PLAIN " + token)
                    with lock:
                        outcomes[code] = outcomes.get(code, 0) + 1
                    if code != 535:
                        break
        except (OSError, smtplib.SMTPException):
            pass


def test_attack_blocks_the_attacker_not_the_good_client(postern, sink):
    import subprocess
    from conftest import BIN

    postern.cli("account", "create", "victim")
    subprocess.run(
        [str(BIN), "--config", str(postern.config_path), "account", "password", "victim"],
        input="violet-anchor-tundra-42\n", text=True, check=True, capture_output=True,
    )
    postern.cli("account", "password-auth", "victim", "on")
    counter, lock, outcomes, stop = [0], threading.Lock(), {}, threading.Event()
    threads = [
        threading.Thread(target=attacker, args=(postern, counter, lock, outcomes, stop), daemon=True)
        for _ in range(ATTACKERS)
    ]
    started = time.time()
    for t in threads:
        t.start()

    # The good client: another /24 (127.0.1.0/24), one message per connection.
    ctx = ssl.create_default_context(cafile=postern.cert)
    latencies, sent = [], 0
    while any(t.is_alive() for t in threads) and time.time() - started < 120:
        t0 = time.time()
        with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30,
                          source_address=("127.0.1.2", 0)) as s:
            s.starttls(context=ctx)
            s.login("apikey", postern.admin_key)
            s.sendmail("app@example.org", ["user@example.net"], b"Subject: during attack\r\n\r\nok\r\n")
        latencies.append(time.time() - t0)
        sent += 1
    stop.set()
    for t in threads:
        t.join(timeout=30)
    attack_seconds = time.time() - started

    assert counter[0] >= ATTEMPTS, f"attack ended early: {counter[0]} attempts"
    assert outcomes.get(454, 0) > 0, f"attacker never blocked: {outcomes}"
    assert outcomes.get(235, 0) == 0
    sink.wait_for(sent)
    p50 = statistics.median(latencies) * 1000
    p99 = sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)] * 1000
    print(
        f"\nbrute force: {counter[0]} wrong attempts in {attack_seconds:.1f}s, replies {outcomes}; "
        f"good client from another network: {sent} messages, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    assert sent > 0


def wrong_login(postern, user, source):
    return auth_plain(postern, user, "wrong-guess-9999", source)[0]


def test_spraying_and_stuffing_are_detected(postern):
    import json
    # Spraying: one address, many accounts.
    for user in ["ann", "bob", "cid", "dan", "eve"]:
        wrong_login(postern, user, "127.6.0.1")
    assert wrong_login(postern, "fay", "127.6.0.1") == 454, "the sprayer is blocked"
    # Stuffing: many addresses (each in its own network), one account.
    for i in range(10):
        wrong_login(postern, "target", f"127.7.{i}.1")
    assert wrong_login(postern, "target", "127.7.3.1") == 454, "stuffing sources are shut out of the account"
    time.sleep(0.3)
    kinds = [e["kind"] for e in json.loads(postern.cli("audit", "--kind", "defense.", "--json").stdout)]
    assert "defense.password_spraying" in kinds and "defense.credential_stuffing" in kinds, kinds
    metrics = urllib_get(f"http://127.0.0.1:{postern.ports['http']}/metrics")
    assert 'postern_auth_detections_total{kind="defense.password_spraying"}' in metrics


def urllib_get(url):
    import urllib.request
    return urllib.request.urlopen(url, timeout=10).read().decode()
