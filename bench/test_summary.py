"""bench/summary.py on synthetic runs (no benchmark is run): unclean runs
stay out of the medians and make the exit status non-zero, each target
gets PASS or MISS, and side-by-side.sh parses and measures every target."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import summary  # noqa: E402


def run(rate, errors=0, accepted=5000, delivered=None, label="r"):
    return {"label": label, "errors": errors, "accepted": accepted,
            "delivered": accepted if delivered is None else delivered, "e2e_msgs_per_s": rate}


def test_a_run_counts_only_when_clean():
    assert summary.problems(run(100)) == []
    assert summary.problems(run(100, errors=3)) == ["3 errors"]
    assert summary.problems(run(100, delivered=4999)) == ["4999 of 5000 accepted messages delivered"]
    assert summary.problems(run(100, accepted=0)) == ["nothing accepted"]
    assert summary.problems({"label": "x"}) == ["None errors", "nothing accepted"]


def test_unclean_runs_never_enter_the_median():
    runs = [run(100), run(1_000_000, errors=1, label="bad"), run(300), run(9, delivered=1, label="lost"), run(200)]
    median, left_out = summary.clean_median(runs)
    assert median == 200
    assert [label for label, _ in left_out] == ["bad", "lost"]
    assert summary.clean_median([run(5, errors=1)]) == (None, [("r", ["1 errors"])])


TARGET_CASES = sorted((name, peer, target) for name, by_peer in summary.TARGETS.items()
                      for peer, target in by_peer.items())


def peers_at(name, rate):
    """Every peer TARGETS names for `name` at `rate`."""
    return {peer: [run(rate)] for peer in summary.TARGETS.get(name, {"postfix": 0})}


@pytest.mark.parametrize("name,peer,target", TARGET_CASES)
def test_each_target_is_pass_at_or_above_and_miss_below(name, peer, target):
    # Every other peer far behind, so that only `peer` decides.
    others = {p: [run(1)] for p in summary.TARGETS[name] if p != peer}
    at = summary.scenario(name, "d", {"postern": [run(100 * target)], peer: [run(100)], **others})
    below = summary.scenario(name, "d", {"postern": [run(100 * target - 1)], peer: [run(100)], **others})
    assert (at["verdicts"][peer], at["ratio"][peer], at["target_ratio"][peer]) == ("PASS", target, target)
    assert at["verdict"] == "PASS"
    assert below["verdicts"][peer] == "MISS" and below["ratio"][peer] < target
    assert below["verdict"] == "MISS"


def test_targets_are_the_agreed_ones():
    assert summary.TARGETS == {
        "50x10": {"postfix": 10.0, "opensmtpd": 10.0},
        "50x1": {"postfix": 6.0},
        "signed-verp": {"postfix": 3.5, "postfix-opendkim": 6.0},
        "domains": {"postfix": 8.0},
        "inbound": {"postfix-inbound": 5.0},
    }
    assert summary.RSA_BOUND_TARGET_PERCENT == 70.0


def test_every_peer_gets_its_median_and_ratio_and_one_miss_fails_the_line():
    line = summary.scenario("signed-verp", "d", {
        "postern": [run(2000), run(2100), run(2200)],
        "postfix": [run(500), run(400), run(600)],
        "postfix-opendkim": [run(300), run(400), run(350)],
    })
    assert line["msgs_per_s"] == {"postern": 2100, "postfix": 500, "postfix-opendkim": 350}
    assert line["ratio"] == {"postfix": 4.2, "postfix-opendkim": 6.0}
    assert line["verdicts"] == {"postfix": "PASS", "postfix-opendkim": "PASS"}
    line = summary.scenario("signed-verp", "d", {
        "postern": [run(2000)], "postfix": [run(500)], "postfix-opendkim": [run(400)]})
    assert line["verdicts"] == {"postfix": "PASS", "postfix-opendkim": "MISS"} and line["verdict"] == "MISS"
    # A peer without a target (OpenSMTPD at 50x1) is reported, not judged.
    line = summary.scenario("50x1", "d", {"postern": [run(600)], "postfix": [run(100)], "opensmtpd": [run(200)]})
    assert line["ratio"] == {"postfix": 6.0, "opensmtpd": 3.0} and line["verdicts"] == {"postfix": "PASS"}


def test_a_target_without_runs_of_its_peer_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="opensmtpd"):
        summary.scenario("50x10", "d", {"postern": [run(5000)], "postfix": [run(100)]})


def test_a_side_without_a_clean_run_is_a_miss_not_a_figure():
    line = summary.scenario("50x10", "d", {"postern": [run(5000, errors=2)], "postfix": [run(100)],
                                           "opensmtpd": [run(100)]})
    assert (line["msgs_per_s"]["postern"], line["ratio"]["postfix"], line["verdict"]) == (None, None, "MISS")
    assert line["left_out"] == ["r: 2 errors"]
    line = summary.scenario("50x10", "d", {"postern": [run(5000)], "postfix": [run(100)],
                                           "opensmtpd": [run(100, delivered=3, label="os")]})
    assert (line["ratio"]["opensmtpd"], line["verdicts"]["opensmtpd"]) == (None, "MISS")
    assert line["left_out"] == ["os: 3 of 5000 accepted messages delivered"]
    # A reference line has no target and no verdict.
    assert summary.scenario("signing-reference", "d", {"postern": [run(10)], "postfix": [run(1)]})["verdict"] is None


def test_the_command_line_exits_non_zero_when_a_run_was_left_out(tmp_path):
    pn, pf, os_ = tmp_path / "pn", tmp_path / "pf", tmp_path / "os"
    pn.write_text("\n".join(json.dumps(r) for r in [run(1000), run(1200), run(50_000, errors=1, label="bad")]) + "\n")
    pf.write_text(json.dumps(run(100)) + "\n")
    os_.write_text(json.dumps(run(125)) + "\n")
    cmd = [sys.executable, str(HERE / "summary.py"), "scenario", "50x10", "fifty by ten",
           f"postern={pn}", f"postfix={pf}", f"opensmtpd={os_}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    line = json.loads(out.stdout)
    assert (line["msgs_per_s"]["postern"], line["ratio"], line["verdict"]) == (
        1100, {"postfix": 11.0, "opensmtpd": 8.8}, "MISS")
    assert "PASS: fifty by ten: 11.0x postfix, target 10.0x" in out.stderr
    assert "MISS: fifty by ten: 8.8x opensmtpd, target 10.0x" in out.stderr
    assert "left out of the median: bad: 1 errors" in out.stderr
    # All clean: exit 0, whether PASS or MISS.
    pn.write_text(json.dumps(run(500)) + "\n")
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["verdict"] == "MISS", out
    check = [sys.executable, str(HERE / "summary.py"), "check", "large"]
    assert subprocess.run(check + [json.dumps(run(1))]).returncode == 0
    assert subprocess.run(check + [json.dumps(run(1)), json.dumps(run(1, delivered=0))],
                          capture_output=True).returncode == 2


def test_rsa_bound_is_the_signed_median_over_the_signing_rate(tmp_path):
    rate = {"rsa2048_signatures_per_s": 3000, "threads": 2, "seconds": 5.0, "signatures": 15000}
    signed = [run(2000), run(2200), run(2100, errors=1), run(2150)]
    line = summary.rsa_bound(signed, rate)
    # The unclean 2100 is left out: the median of 2000, 2150, 2200.
    assert (line["postern_signed_msgs_per_s"], line["percent_of_rsa_bound"], line["verdict"]) == (2150, 71.7, "PASS")
    assert summary.rsa_bound([run(2099)], rate)["verdict"] == "MISS"
    assert summary.rsa_bound([run(2100)], rate)["verdict"] == "PASS"
    assert summary.rsa_bound([run(1, errors=1)], rate)["percent_of_rsa_bound"] is None
    runs = tmp_path / "signed"
    runs.write_text("\n".join(json.dumps(r) for r in signed) + "\n")
    out = subprocess.run([sys.executable, str(HERE / "summary.py"), "rsa-bound", str(runs), json.dumps(rate)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["percent_of_rsa_bound"] == 71.7, out
    assert "PASS: Postern signs at 71.7 %" in out.stderr


def test_large_reports_peak_memory_against_the_budget():
    a = {"connections": 200, "messages_per_connection": 1, "message_bytes": 20 * 2**20, "e2e_mib_per_s": 68.4,
         "pushbacks": 3732, "e2e_seconds": 58, "loadgen_peak_rss_kib": 1000}
    b = {**a, "e2e_mib_per_s": 148.6, "pushbacks": 0, "e2e_seconds": 27}
    c = {"connections": 50, "attachment_bytes": 10 * 2**20, "e2e_mib_per_s": 67.1, "pushbacks": 371, "e2e_seconds": 60}
    pn = {"peak_rss_kib": 900 * 1024, "vmhwm_kib": 926 * 1024}
    pf = {"peak_rss_kib": 3631 * 1024, "peak_pss_kib": 473 * 1024, "processes_at_peak": 374}
    api = {"peak_rss_kib": 643 * 1024, "vmhwm_kib": 926 * 1024}
    line = summary.large(a, b, c, pn, pf, api, 47 * 1024, 256 * 2**20, 25 * 2**20)
    assert line["budget_mib"] == 256 and line["postern_vmhwm_mib"] == 926
    assert line["postern_peak_over_budget"] == round(926 / 256, 2)


def test_the_script_parses_and_measures_every_target_against_its_peers():
    script = HERE / "side-by-side.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    default = re.search(r'^PEERS_DEFAULT="([^"]*)"', text, re.M).group(1).split()
    # One logical line per scenario call (continuations joined), with the
    # peers its PEERS= prefix names, or the default.
    joined = text.replace("\\\n", " ")
    measured = {}
    for peers, name in re.findall(r'^\s*(?:PEERS="([^"]*)"\s+)?(?:\w+=\S+\s+)*scenario ([\w-]+) ', joined, re.M):
        measured[name] = peers.split() if peers else default
    assert set(summary.TARGETS) <= set(measured), measured
    for name, by_peer in summary.TARGETS.items():
        assert measured[name][0] == "postern" and set(by_peer) <= set(measured[name]), (name, measured[name])
    # Every peer a scenario names can be run.
    runnable = set(re.findall(r"^\s{4}([\w-]+)\)$", text[text.index("run_load() {"):], re.M))
    assert {p for peers in measured.values() for p in peers} <= runnable, runnable
    # The RSA-bound limit is measured in the signing scenario.
    assert "rsa_bound" in text[text.index("signing_scenario() {"):text.index("rsa_bound() {")]
    # No median is taken anywhere but in summary.py.
    assert "statistics.median" not in text


def sized(mib_per_s, size_mib, accepted=20):
    return {"label": "s", "errors": 0, "accepted": accepted, "delivered": accepted,
            "e2e_mib_per_s": mib_per_s, "message_bytes": size_mib * 2**20}


def mem(peak_kib):
    return {"peak_rss_kib": peak_kib, "vmhwm_kib": peak_kib // 2, "peak_pss_kib": peak_kib // 3}


def test_sizes_reports_each_size_and_flags_throughput_that_does_not_hold():
    line = summary.sizes([(sized(80.0, 1), sized(40.0, 1), mem(200 * 1024), mem(300 * 1024)),
                          (sized(60.0, 10), sized(50.0, 10), mem(400 * 1024), mem(350 * 1024))])
    assert [r["message_mib"] for r in line["rows"]] == [1.0, 10.0]
    assert line["rows"][0]["ratio"] == 2.0
    assert line["rows"][1]["postern_peak_rss_mib"] == 400.0
    assert line["rows"][1]["postfix_peak_pss_sum_mib"] == round(350 / 3, 1)
    assert line["postern_mib_per_s_largest_over_smallest"] == 0.75
    assert line["linear"] is True
    # 10 MiB at a third of 1 MiB's rate: work growing faster than the size.
    slow = summary.sizes([(sized(90.0, 1), sized(40.0, 1), mem(1), mem(1)),
                          (sized(30.0, 10), sized(50.0, 10), mem(1), mem(1))])
    assert slow["linear"] is False


def test_sizes_command_exits_non_zero_when_not_linear():
    args = [json.dumps(x) for x in (sized(90.0, 1), sized(40.0, 1), mem(1), mem(1),
                                    sized(30.0, 10), sized(50.0, 10), mem(1), mem(1))]
    out = subprocess.run([sys.executable, str(HERE / "summary.py"), "sizes", *args], capture_output=True, text=True)
    assert out.returncode == 2
    assert "NOT LINEAR" in out.stderr
    assert json.loads(out.stdout)["linear"] is False
    bad = subprocess.run([sys.executable, str(HERE / "summary.py"), "sizes", *args[:3]], capture_output=True, text=True)
    assert bad.returncode == 64


def test_sizes_gives_no_verdict_on_a_run_with_errors():
    bad = dict(sized(97.5, 10), errors=5)
    line = summary.sizes([(sized(140.0, 1), sized(130.0, 1), mem(1), mem(1)),
                          (bad, sized(210.0, 10), mem(1), mem(1))])
    assert line["linear"] is False
    assert line["postern_mib_per_s_largest_over_smallest"] is None
    assert line["left_out"] == ["s: 5 errors"]


def test_scanners_says_where_the_time_goes(tmp_path):
    runs = [dict(run(300), accepted=5000), dict(run(320), accepted=5000), dict(run(9000, errors=1, label="bad"), accepted=0)]
    native = [run(1000), run(900), run(1100)]
    hz = 100
    # 10,000 messages: Postern 30 s of CPU, clamd 50 s, rspamd 20 s.
    line = summary.scanners(runs, native, hz, (1000, 4000), (0, 5000), (500, 2500),
                            {"postern_spam_scan_seconds_sum": 1.0, "postern_spam_scan_seconds_count": 10},
                            {"postern_spam_scan_seconds_sum": 41.0, "postern_spam_scan_seconds_count": 10010})
    assert (line["msgs_per_s"], line["native_only_msgs_per_s"], line["kept_of_native"]) == (310, 1000, 0.31)
    assert line["cpu_ms_per_message"] == {"postern": 3.0, "clamd": 5.0, "rspamd": 2.0}
    assert (line["rspamd_scans"], line["rspamd_scan_mean_ms"]) == (10000, 4.0)
    assert line["left_out"] == ["bad: 1 errors, nothing accepted"]
    pn, nat = tmp_path / "pn", tmp_path / "native"
    pn.write_text("\n".join(json.dumps(r) for r in runs[:2]) + "\n")
    nat.write_text("\n".join(json.dumps(r) for r in native) + "\n")
    out = subprocess.run([sys.executable, str(HERE / "summary.py"), "scanners", str(pn), str(nat), "100",
                          "1000 4000", "0 5000", "500 2500",
                          "postern_spam_scan_seconds_sum=1.0 postern_spam_scan_seconds_count=10",
                          "postern_spam_scan_seconds_count=10010 postern_spam_scan_seconds_sum=41.0"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rspamd_scan_mean_ms"] == 4.0
    assert "CPU per message: Postern 3.0 ms, clamd 5.0 ms, rspamd 2.0 ms" in out.stderr
