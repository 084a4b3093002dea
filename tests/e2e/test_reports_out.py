"""The reports Postern sends: DMARC aggregate reports (RFC 7489 §7.2) to
the rua= of the senders of inbound mail. smtplib is the sending MTA,
dkimpy the sender's signer, a dnslib server on loopback the senders' DNS,
and the sink both the internal server and the report destinations (the
"*" route sends everything there)."""

import email
import email.policy
import email.utils
import gzip
import json
import time
import xml.etree.ElementTree as ET

from conftest import wait_until
from test_inbound_auth import message, rsa_key, send, server, signed, zone  # noqa: F401 (zone: a fixture)

# RFC 7489 appendix C as mail-auth writes it (the namespace of the
# DMARCbis revision of the schema; the elements are RFC 7489's).
NS = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}


def reports_to(sink, address):
    return [m for m in sink.messages if address in m["rcpt_tos"]]


def report_xml(data):
    """The aggregate report in a report mail: its one gzip attachment,
    gunzipped and parsed."""
    # The default policy decodes encoded words (RFC 2047), which
    # mail-auth's writer uses for the long subject.
    msg = email.message_from_bytes(data, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
    assert len(parts) == 1, [p.get_content_type() for p in msg.walk()]
    assert parts[0].get_filename().endswith(".xml.gz"), parts[0].get_filename()
    return msg, ET.fromstring(gzip.decompress(parts[0].get_payload(decode=True)))


def text(node, path):
    found = node.find(path, NS)
    assert found is not None, path
    return found.text


def records(root):
    """Each <record> as (source_ip, disposition, dkim, spf, header_from,
    envelope_from, [(dkim domain, selector, result)], [(spf domain, scope,
    result)]) -> count."""
    out = {}
    for r in root.findall("d:record", NS):
        key = (
            text(r, "d:row/d:source_ip"),
            text(r, "d:row/d:policy_evaluated/d:disposition"),
            text(r, "d:row/d:policy_evaluated/d:dkim"),
            text(r, "d:row/d:policy_evaluated/d:spf"),
            text(r, "d:identifiers/d:header_from"),
            text(r, "d:identifiers/d:envelope_from"),
            tuple((text(a, "d:domain"), text(a, "d:selector"), text(a, "d:result"))
                  for a in r.findall("d:auth_results/d:dkim", NS)),
            tuple((text(a, "d:domain"), text(a, "d:scope"), text(a, "d:result"))
                  for a in r.findall("d:auth_results/d:spf", NS)),
        )
        assert key not in out, f"equal rows are one record with a count: {key}"
        out[key] = int(text(r, "d:row/d:count"))
    return out


def test_dmarc_aggregate_report_to_the_senders_rua(sink, zone):
    rsa_pem, rsa_txt = rsa_key()
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("s1._domainkey.sender.test", rsa_txt)
    # Three destinations: one in the policy domain, one in another domain
    # that agreed to take its reports, one in another domain that did not.
    zone.txt("_dmarc.sender.test",
             "v=DMARC1; p=quarantine; rua=mailto:agg@sender.test,"
             "mailto:dmarc@authorized.test,mailto:dmarc@thirdparty.test")
    zone.txt("sender.test._report._dmarc.authorized.test", "v=DMARC1")
    zone.txt("esp.test", "v=spf1 ip4:192.0.2.1 -all")
    with server(sink, zone.port) as p:
        started = time.time()
        # Two aligned and signed (DMARC pass, delivered), one from a
        # mail.sender.test subdomain (under sender.test's policy), and one
        # forged (MAIL FROM failing SPF, unsigned: DMARC fail, held under
        # p=quarantine).
        for _ in range(2):
            assert send(p, "bounce@sender.test", signed(message("ceo@sender.test"), "sender.test", "s1", rsa_pem))[0] == 250
        assert send(p, "bounce@sender.test", signed(message("news@mail.sender.test"), "sender.test", "s1", rsa_pem))[0] == 250
        assert send(p, "bounce@esp.test", message("ceo@sender.test", subject="forged"))[0] == 250
        sink.wait_for(3)
        wait_until(lambda: len(json.loads(p.cli("quarantine", "list", "--json").stdout)) == 1, what="the forged one held")

        out = p.cli("reports", "send-now").stdout
        assert "sent dmarc sender.test to agg@sender.test: 4 messages" in out, out
        assert "sent dmarc sender.test to dmarc@authorized.test" in out, out
        assert "not sent dmarc sender.test to dmarc@thirdparty.test" in out and "_report._dmarc" in out, out
        wait_until(lambda: reports_to(sink, "agg@sender.test") and reports_to(sink, "dmarc@authorized.test"),
                   what="both reports delivered")
        [mail] = reports_to(sink, "agg@sender.test")
        # Generated mail, queued as DSNs are: null reverse-path (RFC 5321
        # §4.5.5, nothing bounces back to it), From the reporting server.
        assert mail["mail_from"] in ("", "<>"), mail["mail_from"]
        msg, root = report_xml(mail["data"])
        assert email.utils.parseaddr(msg["From"])[1] == "postmaster@postern.test", msg["From"]
        report_id = text(root, "d:report_metadata/d:report_id")
        assert msg["Subject"] == f"Report Domain: sender.test Submitter: postern.test Report-ID: <{report_id}>", msg["Subject"]
        assert text(root, "d:report_metadata/d:org_name") == "postern.test"
        assert text(root, "d:report_metadata/d:email") == "postmaster@postern.test"
        begin = int(text(root, "d:report_metadata/d:date_range/d:begin"))
        end = int(text(root, "d:report_metadata/d:date_range/d:end"))
        # From the first message to the pass (whole seconds).
        assert int(started) <= begin <= end <= time.time() + 1, (started, begin, end)
        assert text(root, "d:policy_published/d:domain") == "sender.test"
        assert text(root, "d:policy_published/d:p") == "quarantine"

        dkim_pass = (("sender.test", "s1", "pass"),)
        spf_pass = (("sender.test", "mfrom", "pass"),)
        assert records(root) == {
            ("127.0.0.1", "none", "pass", "pass", "sender.test", "sender.test", dkim_pass, spf_pass): 2,
            ("127.0.0.1", "none", "pass", "pass", "mail.sender.test", "sender.test", dkim_pass, spf_pass): 1,
            ("127.0.0.1", "quarantine", "fail", "fail", "sender.test", "esp.test", (), (("esp.test", "mfrom", "fail"),)): 1,
        }, records(root)
        # The authorised third party gets the same report.
        [other] = reports_to(sink, "dmarc@authorized.test")
        assert records(report_xml(other["data"])[1]) == records(root)

        # Nothing was queued for the unauthorised one: every report of the
        # pass was queued before send-now returned, and none of the queued
        # mail names it.
        events = json.loads(p.cli("events", "--json").stdout)
        assert not [e for e in events if e.get("recipient") == "dmarc@thirdparty.test"], events
        processed = [e for e in events if e["event"] == "processed" and "dmarc aggregate report for sender.test" in e["detail"]]
        assert sorted(e["recipient"] for e in processed) == ["agg@sender.test", "dmarc@authorized.test"], processed

        # Reported once: the next pass has nothing.
        assert p.cli("reports", "send-now").stdout.strip() == "nothing to report"
        # Mail arriving after a report is in the next one, alone.
        assert send(p, "bounce@sender.test", signed(message("ceo@sender.test"), "sender.test", "s1", rsa_pem))[0] == 250
        wait_until(lambda: "sent dmarc sender.test to agg@sender.test: 1 messages" in p.cli("reports", "send-now").stdout,
                   what="the second report")
        wait_until(lambda: len(reports_to(sink, "agg@sender.test")) == 2, what="the second report delivered")
        second = records(report_xml(reports_to(sink, "agg@sender.test")[1]["data"])[1])
        assert list(second.values()) == [1], second


def test_nothing_is_recorded_while_dmarc_aggregate_is_off(sink, zone):
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("_dmarc.sender.test", "v=DMARC1; p=none; rua=mailto:agg@sender.test")
    with server(sink, zone.port) as p:
        on = p.config_path.read_text()
        p.stop()
        p.config_path.write_text(on + "\n[reports]\ndmarc_aggregate = false\n")
        p.start()
        assert send(p, "bounce@sender.test", message("off@sender.test"))[0] == 250
        sink.wait_for(1)
        # Stopped (the store closes after every write sent to it) and
        # started with reports on: the next message is the only one the
        # report counts; had the first been recorded, it would count too.
        p.stop()
        p.config_path.write_text(on)
        p.start()
        assert send(p, "bounce@sender.test", message("on@sender.test"))[0] == 250
        sink.wait_for(2)
        out = wait_until(lambda: (o := p.cli("reports", "send-now").stdout) != "nothing to report\n" and o,
                         what="a report")
        assert "sent dmarc sender.test to agg@sender.test: 1 messages" in out, out
