"""The bookkeeping of bench/side-by-side.sh, apart from the runs themselves
so that it can be tested without running a benchmark (bench/test_summary.py,
run by scripts/test.sh).

A run is one JSON line from postern-loadgen. A run counts only when it is
clean: no errors, and every accepted message delivered. A run that is not
clean never goes into a median; the script reports it and exits non-zero
at the end. Each scenario with a target prints PASS or MISS against it.

    python3 bench/summary.py scenario NAME DESCRIPTION POSTERN_RUNS POSTFIX_RUNS
    python3 bench/summary.py check LABEL RUN_JSON...
    python3 bench/summary.py large SMTP POSTFIX API PN_MEM PF_MEM API_MEM BASE_KIB BUDGET MAX_SIZE

POSTERN_RUNS and POSTFIX_RUNS are files of runs, one JSON object a line.
Exit status: 0, or 2 when a run was left out (or, for `check`, is not
clean). PASS or MISS is a result, not an error: it does not change it.
"""

import json
import statistics
import sys

# Postern's end-to-end rate over Postfix's (unsigned, with the same load)
# that each scenario must reach.
TARGETS = {
    "50x10": 10.0,  # 50 connections x 10 messages, STARTTLS + AUTH, unsigned
    "50x1": 6.0,  # 50 connections x 1 message: a handshake and AUTH per message
    "signed-verp": 3.5,  # 50x10, Postern dual-signing (RSA + Ed25519) with VERP
    "domains": 8.0,  # 100 destination domains, every 10th recipient deferred once
}


def problems(run):
    """Why a run does not count (empty when it is clean)."""
    out = []
    if run.get("errors") != 0:
        out.append(f"{run.get('errors')} errors")
    accepted, delivered = run.get("accepted"), run.get("delivered")
    if not accepted:
        out.append("nothing accepted")
    elif delivered != accepted:
        out.append(f"{delivered} of {accepted} accepted messages delivered")
    return out


def clean_median(runs, key="e2e_msgs_per_s"):
    """The median of `key` over the clean runs (None if there are none),
    and the runs left out with their reasons."""
    good, left_out = [], []
    for run in runs:
        why = problems(run)
        if why:
            left_out.append((run.get("label", "?"), why))
        else:
            good.append(float(run[key]))
    return (statistics.median(good) if good else None), left_out


def verdict(ratio, target):
    if target is None:
        return None
    return "PASS" if ratio is not None and ratio >= target else "MISS"


def scenario(name, description, postern_runs, postfix_runs):
    """The summary line of one scenario: medians of the clean runs, their
    ratio, and PASS or MISS against the scenario's target (none for a
    reference line, whose NAME is not in TARGETS)."""
    pn, pn_out = clean_median(postern_runs)
    pf, pf_out = clean_median(postfix_runs)
    ratio = round(pn / pf, 2) if pn is not None and pf else None
    target = TARGETS.get(name)
    return {
        "scenario": description,
        "postern_msgs_per_s": pn,
        "postfix_msgs_per_s": pf,
        "ratio": ratio,
        "target_ratio": target,
        "verdict": verdict(ratio, target),
        "clean_runs": {"postern": len(postern_runs) - len(pn_out), "postfix": len(postfix_runs) - len(pf_out)},
        "left_out": [f"{label}: {', '.join(why)}" for label, why in pn_out + pf_out],
    }


def large(a, b, c, pn, pf, api, base_kib, budget, max_size):
    """The large-message scenario's line: throughput, and Postern's peak
    memory beside the body memory budget."""
    mib = lambda kib: round(kib / 1024, 1)
    peak_kib = max(pn["vmhwm_kib"], pn["peak_rss_kib"], api["vmhwm_kib"], api["peak_rss_kib"])
    return {
        "scenario": f"{a['connections']} clients x {a['messages_per_connection']} msgs of {a['message_bytes'] / 2**20:.0f} MiB "
                    "(DATA/BDAT x STARTTLS+AUTH submission/plaintext unauthenticated relay, a quarter each; 4xx retried), "
                    f"then {c['connections']} /v3/mail/send with a {c['attachment_bytes'] / 2**20:.0f} MiB attachment (Postern only)",
        "budget_mib": budget / 2**20,
        "max_message_size_mib": max_size / 2**20,
        "postern_rss_before_mib": mib(base_kib),
        "postern_peak_rss_smtp_mib": mib(pn["peak_rss_kib"]),
        "postern_peak_rss_api_mib": mib(api["peak_rss_kib"]),
        "postern_vmhwm_after_smtp_mib": mib(pn["vmhwm_kib"]),
        "postern_vmhwm_mib": mib(api["vmhwm_kib"]),
        "postern_peak_over_budget": round(peak_kib * 1024 / budget, 2),
        "postfix_peak_rss_sum_mib": mib(pf["peak_rss_kib"]),
        "postfix_peak_pss_sum_mib": mib(pf["peak_pss_kib"]),
        "postfix_processes_at_peak": pf["processes_at_peak"],
        "postern_smtp_e2e_mib_per_s": a["e2e_mib_per_s"],
        "postfix_smtp_e2e_mib_per_s": b["e2e_mib_per_s"],
        "postern_smtp_4xx": a["pushbacks"],
        "postfix_smtp_4xx": b["pushbacks"],
        "postern_smtp_seconds": a["e2e_seconds"],
        "postfix_smtp_seconds": b["e2e_seconds"],
        "postern_api_e2e_mib_per_s": c["e2e_mib_per_s"],
        "postern_api_503": c["pushbacks"],
        "postern_api_seconds": c["e2e_seconds"],
        "loadgen_peak_rss_mib": mib(max(a["loadgen_peak_rss_kib"], b["loadgen_peak_rss_kib"])),
    }


def read_runs(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "scenario":
        name, description, pn_path, pf_path = args
        line = scenario(name, description, read_runs(pn_path), read_runs(pf_path))
        print(json.dumps(line))
        if line["verdict"]:
            print(f"{line['verdict']}: {description}: {line['ratio']}x Postfix, target {line['target_ratio']}x",
                  file=sys.stderr)
        for why in line["left_out"]:
            print(f"left out of the median: {why}", file=sys.stderr)
        return 2 if line["left_out"] else 0
    if command == "check":
        label, runs = args[0], [json.loads(r) for r in args[1:]]
        bad = [(r.get("label", "?"), problems(r)) for r in runs if problems(r)]
        for run_label, why in bad:
            print(f"{label}: {run_label}: {', '.join(why)}", file=sys.stderr)
        return 2 if bad else 0
    if command == "large":
        runs = [json.loads(x) for x in args[:6]]
        line = large(*runs, int(args[6]), int(args[7]), int(args[8]))
        print(json.dumps(line))
        print(f"large messages: Postern's peak RSS {max(line['postern_vmhwm_mib'], line['postern_peak_rss_smtp_mib'], line['postern_peak_rss_api_mib'])} MiB "
              f"for a body memory budget of {line['budget_mib']:.0f} MiB ({line['postern_peak_over_budget']}x the budget)",
              file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
