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


@pytest.mark.parametrize("name,target", sorted(summary.TARGETS.items()))
def test_each_target_is_pass_at_or_above_and_miss_below(name, target):
    pf = [run(100)]
    at = summary.scenario(name, "d", [run(100 * target)], pf)
    below = summary.scenario(name, "d", [run(100 * target - 1)], pf)
    assert (at["verdict"], at["ratio"], at["target_ratio"]) == ("PASS", target, target)
    assert below["verdict"] == "MISS" and below["ratio"] < target


def test_targets_are_the_agreed_ones():
    assert summary.TARGETS == {"50x10": 10.0, "50x1": 6.0, "signed-verp": 3.5, "domains": 8.0}


def test_a_side_without_a_clean_run_is_a_miss_not_a_figure():
    line = summary.scenario("50x10", "d", [run(5000, errors=2)], [run(100)])
    assert (line["postern_msgs_per_s"], line["ratio"], line["verdict"]) == (None, None, "MISS")
    assert line["left_out"] == ["r: 2 errors"]
    # A reference line has no target and no verdict.
    assert summary.scenario("signing-reference", "d", [run(10)], [run(1)])["verdict"] is None


def test_the_command_line_exits_non_zero_when_a_run_was_left_out(tmp_path):
    pn, pf = tmp_path / "pn", tmp_path / "pf"
    pn.write_text("\n".join(json.dumps(r) for r in [run(1000), run(1200), run(50_000, errors=1, label="bad")]) + "\n")
    pf.write_text(json.dumps(run(100)) + "\n")
    cmd = [sys.executable, str(HERE / "summary.py"), "scenario", "50x10", "fifty by ten", str(pn), str(pf)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    line = json.loads(out.stdout)
    assert (line["postern_msgs_per_s"], line["ratio"], line["verdict"]) == (1100, 11.0, "PASS")
    assert "PASS: fifty by ten: 11.0x Postfix, target 10.0x" in out.stderr
    assert "left out of the median: bad: 1 errors" in out.stderr
    # All clean: exit 0, whether PASS or MISS.
    pn.write_text(json.dumps(run(500)) + "\n")
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["verdict"] == "MISS", out
    check = [sys.executable, str(HERE / "summary.py"), "check", "large"]
    assert subprocess.run(check + [json.dumps(run(1))]).returncode == 0
    assert subprocess.run(check + [json.dumps(run(1)), json.dumps(run(1, delivered=0))],
                          capture_output=True).returncode == 2


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


def test_the_script_parses_and_measures_every_target():
    script = HERE / "side-by-side.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    measured = set(re.findall(r"^\s*scenario ([\w-]+) ", text, re.M))
    assert set(summary.TARGETS) <= measured, measured
    # No median is taken anywhere but in summary.py.
    assert "statistics.median" not in text
