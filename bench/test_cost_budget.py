"""bench/cost_budget.py on a synthetic profile (no benchmark is run): each
sample goes to the stage of its innermost named frame, the shares add up,
and the budget multiplies them by Postern's CPU per message."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cost_budget  # noqa: E402

# Three samples in `perf script -F comm,tid,ip,sym` form: AWS-LC under
# rustls (TLS), the same AWS-LC function under the DKIM signer (signing),
# and a scheduler frame with no stage at all.
SCRIPT = """tokio-rt-worker 16430 
\t         12532a2 aws_lc_0_47_0_bn_add_words
\t          e04975 <rustls::crypto::aws_lc_rs::sign::EcdsaSigner as rustls::crypto::signer::Signer>::sign
\t          6891b0 postern_smtp::listener::handshake::{{closure}}
\tffffffffffffffff [unknown]

tokio-rt-worker 16475 
\t         12532a2 aws_lc_0_47_0_bn_add_words
\t          dda42d aws_lc_rs::rsa::key::PrivateKey::sign
\t          a1b2c3 postern_mailauth::sign::DomainSigner::sign
\t          a1b2c4 postern_queue::intake::Intake::submit::{{closure}}

tokio-rt-worker 16429 
\tffffffff8100 finish_task_switch.isra.0
\tffffffff8101 __schedule
"""


def test_each_sample_goes_to_its_innermost_stage():
    chains = cost_budget.parse_script(SCRIPT)
    assert len(chains) == 3
    assert [cost_budget.classify(c) for c in chains] == ["TLS", "DKIM signing", cost_budget.UNATTRIBUTED]
    # Outermost-first would have put the signature under intake.
    assert cost_budget.classify(chains[1][3:]) == "intake and sender check"


def test_shares_add_up_and_an_empty_profile_is_an_error():
    share, total = cost_budget.shares(cost_budget.parse_script(SCRIPT))
    assert total == 3
    assert share["TLS"] == pytest.approx(1 / 3)
    assert sum(share.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cost_budget.shares([])


def test_budget_scales_shares_by_cpu_per_message(tmp_path):
    stats = {"postern_cpu_s": 3.0, "messages": 5000, "commits": 2500, "loadgen_cpu_s": 1.0,
             "rsa_per_s_one_core": 4000.0, "fsync_us": 800.0, "smtp_floor_us": 90.0}
    (tmp_path / "script.txt").write_text(SCRIPT)
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    out = subprocess.run([sys.executable, str(HERE / "cost_budget.py"), "budget",
                          str(tmp_path / "script.txt"), str(tmp_path / "stats.json")],
                         capture_output=True, text=True, check=True)
    b = json.loads(out.stdout)
    assert b["postern_cpu_us_per_msg"] == 600.0
    assert b["stages_us_per_msg"]["TLS"] == 200.0
    assert b["stages_us_per_msg"]["DKIM signing"] == 200.0
    assert b["stages_us_per_msg"]["commit (store CPU)"] == 0.0
    assert b["floors"]["rsa2048_signature_us"] == 250.0
    assert b["floors"]["fsync_wait_us_per_msg"] == 400.0
    assert b["signing_over_rsa_floor"] == 0.8
    assert "DKIM signing" in out.stderr


def test_fsync_probe_measures_something(tmp_path):
    us = cost_budget.fsync_us(str(tmp_path), 5)
    assert us > 0
    assert not any(tmp_path.iterdir())
