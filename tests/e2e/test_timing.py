"""Unknown and known accounts get the same reply in the same time: a wrong
password for a real account and any password for a made-up one both cost
one Argon2 verification. Prints the medians; fails on a gap above the
measured noise (see the bound's comment)."""

import base64
import smtplib
import ssl
import statistics
import subprocess
import time

from conftest import BIN

ROUNDS = 25


def attempt(p, user, password, source):
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30, source_address=(source, 0)) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.ehlo()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        t0 = time.perf_counter()
        code, msg = s.docmd("AUTH", "PLAIN " + token)
        return time.perf_counter() - t0, code, msg


def test_unknown_and_known_accounts_look_the_same(postern):
    postern.cli("account", "create", "realuser")
    subprocess.run(
        [str(BIN), "--config", str(postern.config_path), "account", "password", "realuser"],
        input="violet-anchor-tundra-42\n", text=True, check=True, capture_output=True,
    )
    postern.cli("account", "password-auth", "realuser", "on")
    known, unknown, replies = [], [], set()
    for i in range(ROUNDS):
        # A fresh source address each time, in its own /24, so the
        # brute-force slow-down (which would add its own delay) stays out.
        for user, bucket, net in [("realuser", known, 4), ("ghostuser", unknown, 5)]:
            dt, code, msg = attempt(postern, user, f"wrong-password-{i:04d}", f"127.{net}.{i}.1")
            bucket.append(dt)
            replies.add((code, msg))
    k, u = statistics.median(known) * 1000, statistics.median(unknown) * 1000
    print(f"\nAUTH timing over {ROUNDS} tries each: known account median {k:.1f} ms, unknown account median {u:.1f} ms, difference {abs(k - u) / max(k, u) * 100:.1f}%")
    assert len(replies) == 1, f"replies differ: {replies}"
    # How close is close enough, from measured distributions (debug build,
    # 2 shared cores, load average about 6): one AUTH takes 500-1000 ms
    # (nearly all of it the Argon2id verification), per-attempt spread
    # about 13% (sd/median); the two medians came out 0.6-1.1% apart, and
    # shuffling the 50 samples between the two groups gives median gaps
    # of 7-15% at the 99th percentile (18% at most) - the noise floor. A
    # 20% bound stays above that noise, and any path that skips the hash
    # for unknown accounts (a gap near 100%), or does anything costing a
    # fifth of a verification more for one kind of account, fails it.
    assert abs(k - u) < 0.2 * max(k, u), "timing reveals whether the account exists"
