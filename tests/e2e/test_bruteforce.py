"""1,000 wrong passwords from one address end in a block, while a good
client on another network keeps sending at a quarter of its unattacked
rate or better. Prints the good client's latency during the attack.
Spraying and stuffing are detected and audited."""

import base64
import smtplib
import ssl
import statistics
import threading
import time

from conftest import auth_plain, wait_until

ATTEMPTS = 1000
ATTACKERS = 8
BASELINE = 20


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
    # The good client: another /24 (127.0.1.0/24), one message per connection.
    ctx = ssl.create_default_context(cafile=postern.cert)

    def good_send():
        t0 = time.time()
        with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30,
                          source_address=("127.0.1.2", 0)) as s:
            s.starttls(context=ctx)
            s.login("apikey", postern.admin_key)
            s.sendmail("app@example.org", ["user@example.net"], b"Subject: during attack\r\n\r\nok\r\n")
        return time.time() - t0

    # Its pace with no attack, for comparison.
    baseline = [good_send() for _ in range(BASELINE)]

    counter, lock, outcomes, stop = [0], threading.Lock(), {}, threading.Event()
    threads = [
        threading.Thread(target=attacker, args=(postern, counter, lock, outcomes, stop), daemon=True)
        for _ in range(ATTACKERS)
    ]
    started = time.time()
    for t in threads:
        t.start()

    latencies = []
    while any(t.is_alive() for t in threads) and time.time() - started < 120:
        latencies.append(good_send())
    sent = len(latencies)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    attack_seconds = time.time() - started

    assert counter[0] >= ATTEMPTS, f"attack ended early: {counter[0]} attempts"
    # Blocked after auth.block_ip_after_failures (20) failures: every
    # attempt is answered 535 or 454, and at most one attempt per attacker
    # thread can have been in flight past the 20th failure (measured: 20-22
    # answered 535, the rest 454).
    assert set(outcomes) <= {535, 454}, outcomes
    assert sum(outcomes.values()) == counter[0], outcomes
    assert 20 <= outcomes.get(535, 0) <= 20 + ATTACKERS, f"not blocked after 20 failures: {outcomes}"
    sink.wait_for(BASELINE + sent)
    p50 = statistics.median(latencies) * 1000
    p99 = sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)] * 1000
    base50 = statistics.median(baseline) * 1000
    print(
        f"\nbrute force: {counter[0]} wrong attempts in {attack_seconds:.1f}s, replies {outcomes}; "
        f"good client from another network: {sent} messages, p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(without the attack: p50 {base50:.1f} ms)"
    )
    # Keeps sending means at a useful pace, not merely once: every send
    # above succeeded (any refusal raises), and over the attack the good
    # client kept at least a quarter of its unattacked rate, its median
    # message no more than 4 times slower. Measured on 2 shared cores:
    # 38-62% of the rate, medians 1.3-2.1 times the baseline (the 8
    # attacker threads share this process's interpreter with it).
    rate, base_rate = sent / attack_seconds, 1000 / base50
    assert rate >= 0.25 * base_rate, f"{rate:.1f} messages/s during the attack, {base_rate:.1f} without"
    assert p50 <= 4 * base50, f"p50 {p50:.1f} ms during the attack, {base50:.1f} ms without"


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
    # The audit entries are appended after the reply (without waiting for
    # their commit): poll for them.
    def detections():
        kinds = {e["kind"] for e in json.loads(postern.cli("audit", "--kind", "defense.", "--json").stdout)}
        return {"defense.password_spraying", "defense.credential_stuffing"} <= kinds
    wait_until(detections, timeout=10, what="spraying and stuffing audit entries")
    metrics = urllib_get(f"http://127.0.0.1:{postern.ports['http']}/metrics")
    assert 'postern_auth_detections_total{kind="defense.password_spraying"}' in metrics


def urllib_get(url):
    import urllib.request
    return urllib.request.urlopen(url, timeout=10).read().decode()
