#!/usr/bin/env python3
"""Postern's cost per message by stage, from a profile, beside the physical
floors measured on the same machine (issue 11, item 4).

How the figures are made (bench/side-by-side.sh, ONLY=profile):
  1. One run of the signed 50x10 load without a profiler: Postern's CPU
     seconds (utime + stime from /proc), its store commits (from /metrics)
     and the load generator's CPU (its clients and its sink) per message.
  2. The same load again under `perf record --call-graph dwarf`: which
     share of Postern's CPU samples falls in each stage. A sample belongs to
     the stage of the innermost frame of its call chain that names one
     (STAGES below, first match from the leaf outwards), so AWS-LC code
     called by rustls counts as TLS and the same code called by the DKIM
     signer counts as signing.
  3. stage µs per message = stage share x Postern's CPU µs per message.
The floors: one RSA-2048 signature on one core (examples/rsa_rate), one
small write + fdatasync on the queue's file system, and one plain SMTP
transaction with Postfix's own smtp-source and smtp-sink (both sides' CPU).

Subcommands (each prints one JSON line):
  run OUT -- CMD...          run CMD, pass its stdout through, write its CPU seconds to OUT
  fsync DIR [N]              µs per 4 KiB append + fdatasync in DIR (median of N)
  smtp-floor PORT [MSGS]     CPU µs per message of smtp-source -> smtp-sink (plain SMTP)
  budget SCRIPT STATS.json   the budget, from `perf script -F comm,tid,ip,sym` output
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

# (stage, pattern) in order of precedence within one frame; a sample goes to
# the innermost frame that matches any pattern.
STAGES = [
    ("TLS", re.compile(r"\brustls::|\btokio_rustls::")),
    ("DKIM signing", re.compile(r"\bpostern_mailauth::sign\b|\bmail_auth::dkim|DomainSigner|authority::\{impl#\d+\}::sign")),
    ("commit (store CPU)", re.compile(r"\bpostern_store::|\bsqlite3|\brusqlite::")),
    ("delivery client", re.compile(r"\bpostern_delivery::")),
    ("intake and sender check", re.compile(r"\bpostern_queue::|\bpostern_mailauth::|\bpostern_accounts::")),
    ("SMTP session (parsing, replies, socket I/O)", re.compile(r"\bpostern_smtp::|\bsmtp_proto::")),
]
UNATTRIBUTED = "runtime, allocator, kernel (no stage in the call chain)"
ORDER = [name for name, _ in STAGES] + [UNATTRIBUTED]


def parse_script(text):
    """The call chains of `perf script -F comm,tid,ip,sym` output, each a
    list of symbol names from the leaf outwards."""
    chains, cur = [], None
    for line in text.splitlines():
        if not line.strip():
            if cur is not None:
                chains.append(cur)
            cur = None
        elif not line[0].isspace():
            cur = []
        elif cur is not None:
            parts = line.strip().split(None, 1)
            cur.append(parts[1] if len(parts) > 1 else "")
    if cur is not None:
        chains.append(cur)
    return chains


def classify(chain):
    for frame in chain:
        for name, pattern in STAGES:
            if pattern.search(frame):
                return name
    return UNATTRIBUTED


def shares(chains):
    counts = {name: 0 for name in ORDER}
    for chain in chains:
        counts[classify(chain)] += 1
    total = sum(counts.values())
    if total == 0:
        raise ValueError("the profile holds no samples")
    return {name: counts[name] / total for name in ORDER}, total


def budget(chains, stats):
    """stats: postern_cpu_s, messages, commits, loadgen_cpu_s,
    rsa_per_s_one_core, fsync_us, smtp_floor_us."""
    share, samples = shares(chains)
    cpu_us = stats["postern_cpu_s"] * 1e6 / stats["messages"]
    stages = {name: round(share[name] * cpu_us, 1) for name in ORDER}
    rsa_us = 1e6 / stats["rsa_per_s_one_core"]
    commits_per_msg = stats["commits"] / stats["messages"]
    return {
        "scenario": "cost-budget",
        "samples": samples,
        "postern_cpu_us_per_msg": round(cpu_us, 1),
        "stages_us_per_msg": stages,
        "stage_shares": {k: round(v, 4) for k, v in share.items()},
        "loadgen_cpu_us_per_msg": round(stats["loadgen_cpu_s"] * 1e6 / stats["messages"], 1),
        "floors": {
            "rsa2048_signature_us": round(rsa_us, 1),
            "fsync_us": round(stats["fsync_us"], 1),
            "commits_per_msg": round(commits_per_msg, 3),
            "fsync_wait_us_per_msg": round(stats["fsync_us"] * commits_per_msg, 1),
            "plain_smtp_transaction_us": round(stats["smtp_floor_us"], 1),
        },
        "signing_over_rsa_floor": round(stages["DKIM signing"] / rsa_us, 2),
    }


def table(b):
    f = b["floors"]
    floor_of = {
        "DKIM signing": f"one RSA-2048 signature: {f['rsa2048_signature_us']} µs",
        "commit (store CPU)": f"fsync {f['fsync_us']} µs x {f['commits_per_msg']} commits/msg = "
        f"{f['fsync_wait_us_per_msg']} µs of waiting (not CPU)",
        "delivery client": f"a plain SMTP transaction, both sides: {f['plain_smtp_transaction_us']} µs",
        "SMTP session (parsing, replies, socket I/O)": f"(same) {f['plain_smtp_transaction_us']} µs",
    }
    rows = [f"Postern CPU per message: {b['postern_cpu_us_per_msg']} µs "
            f"({b['samples']} samples); load generator (clients + sink): {b['loadgen_cpu_us_per_msg']} µs"]
    for name in ORDER:
        rows.append(f"  {name:<45} {b['stages_us_per_msg'][name]:>8} µs  "
                    f"{100 * b['stage_shares'][name]:5.1f} %   {floor_of.get(name, '')}")
    return "\n".join(rows)


def run_cmd(out, cmd):
    before = os.times()
    proc = subprocess.run(cmd)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    with open(out, "w") as f:
        f.write(f"{cpu:.3f}\n")
    return proc.returncode


def fsync_us(directory, n=200):
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"x" * 4096
        times = []
        for _ in range(n):
            os.write(fd, block)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times)


def smtp_floor(port, msgs=5000):
    """CPU of Postfix's smtp-sink and smtp-source for MSGS plain messages of
    1 KiB over 50 sessions, per message (both processes)."""
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{port}", "256"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True)
            if probe.returncode == 0:
                break
            time.sleep(0.05)
        source = subprocess.Popen(["smtp-source", "-s", "50", "-m", str(msgs), "-l", "1024",
                                   "-f", "loadgen@example.org", "-t", "rcpt@example.net", f"127.0.0.1:{port}"])
        _, status, ru_source = os.wait4(source.pid, 0)
        if status != 0:
            raise RuntimeError(f"smtp-source exited with {status}")
    finally:
        sink.send_signal(signal.SIGTERM)
    _, _, ru_sink = os.wait4(sink.pid, 0)
    cpu = ru_source.ru_utime + ru_source.ru_stime + ru_sink.ru_utime + ru_sink.ru_stime
    return cpu * 1e6 / msgs


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "run" and len(argv) > 4 and argv[3] == "--":
        return run_cmd(argv[2], argv[4:])
    if cmd == "fsync" and len(argv) in (3, 4):
        print(json.dumps({"fsync_us": round(fsync_us(argv[2], int(argv[3]) if len(argv) == 4 else 200), 1)}))
        return 0
    if cmd == "smtp-floor" and len(argv) in (3, 4):
        us = smtp_floor(int(argv[2]), int(argv[3]) if len(argv) == 4 else 5000)
        print(json.dumps({"plain_smtp_transaction_us": round(us, 1)}))
        return 0
    if cmd == "budget" and len(argv) == 4:
        with open(argv[2]) as f:
            chains = parse_script(f.read())
        with open(argv[3]) as f:
            stats = json.load(f)
        b = budget(chains, stats)
        print(table(b), file=sys.stderr)
        print(json.dumps(b))
        return 0
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
