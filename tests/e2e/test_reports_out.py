"""The reports Postern sends: DMARC aggregate reports (RFC 7489 §7.2) to
the rua= of the senders of inbound mail, and TLS-RPT reports (RFC 8460)
to the recipient domains of its deliveries. smtplib is the sending MTA,
dkimpy the sender's signer, a dnslib server on loopback the senders' DNS,
and the sink both the internal server and the report destinations (the
"*" route sends everything there)."""

import email
import email.policy
import email.utils
import gzip
import json
import re
import tempfile
import time
import xml.etree.ElementTree as ET

from conftest import Postern, Sink, certificate, send_as, server_context, wait_until
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
    # Four destinations: one in the policy domain, one in another domain
    # that agreed to take its reports, one in another domain that did not,
    # and one that takes reports of at most 100 bytes (RFC 7489 §6.2 "!").
    zone.txt("_dmarc.sender.test",
             "v=DMARC1; p=quarantine; rua=mailto:agg@sender.test,"
             "mailto:dmarc@authorized.test,mailto:dmarc@thirdparty.test,mailto:small@sender.test!100")
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
        assert "not sent dmarc sender.test to small@sender.test" in out and "over its limit of 100" in out, out
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
        assert not [e for e in events if e.get("recipient") in ("dmarc@thirdparty.test", "small@sender.test")], events
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


def test_reports_go_where_the_policy_domain_says_when_they_are_sent(sink, zone):
    """The rua is read from the policy domain's record when the report is
    sent, not from the record a message saw: a domain that moved its rua
    gets the report at the new address, and one that removed its record
    gets none (its rows are dropped, said so)."""
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("_dmarc.sender.test", "v=DMARC1; p=none; rua=mailto:old@sender.test")
    zone.txt("gone.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("_dmarc.gone.test", "v=DMARC1; p=none; rua=mailto:agg@gone.test")
    with server(sink, zone.port) as p:
        assert send(p, "bounce@sender.test", message("a@sender.test"))[0] == 250
        assert send(p, "bounce@gone.test", message("a@gone.test"))[0] == 250
        sink.wait_for(2)
        zone.txt("_dmarc.sender.test", "v=DMARC1; p=none; rua=mailto:new@sender.test")
        del zone.txts["_dmarc.gone.test"]
        out = wait_until(lambda: (o := p.cli("reports", "send-now").stdout) != "nothing to report\n" and o,
                         what="a pass")
        assert "sent dmarc sender.test to new@sender.test: 1 messages" in out, out
        assert "old@sender.test" not in out, out
        assert "dmarc gone.test: no DMARC record any more; its records are dropped" in out, out
        wait_until(lambda: reports_to(sink, "new@sender.test"), what="the report at the new rua")
        assert reports_to(sink, "old@sender.test") == []
        assert reports_to(sink, "agg@gone.test") == []
        assert p.cli("reports", "send-now").stdout.strip() == "nothing to report"


def test_a_report_goes_to_the_first_five_destinations_only(sink, zone):
    """A record may list any number of rua destinations; a pass serves the
    first five, so one domain cannot have Postern queue hundreds of
    copies."""
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    rua = ",".join(f"mailto:r{i}@sender.test" for i in range(7))
    zone.txt("_dmarc.sender.test", f"v=DMARC1; p=none; rua={rua}")
    with server(sink, zone.port) as p:
        assert send(p, "bounce@sender.test", message("a@sender.test"))[0] == 250
        sink.wait_for(1)
        out = wait_until(lambda: (o := p.cli("reports", "send-now").stdout) != "nothing to report\n" and o,
                         what="a pass")
        sent = sorted(line.split(" to ")[1].split(":")[0] for line in out.splitlines() if line.startswith("sent dmarc"))
        assert sent == [f"r{i}@sender.test" for i in range(5)], out


class ReportReceiver:
    """An HTTPS server on loopback taking TLS-RPT reports by POST (RFC 8460
    §5.4), presenting a certificate for `name` issued by `ca` (which
    Postern trusts through webhooks.ca_file)."""

    def __init__(self, directory, name, ca):
        import http.server
        import ssl
        import threading

        self.posts = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, self.headers["Content-Type"], body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        leaf = certificate(directory, "reports", names=[name], issuer=ca)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf["cert"], leaf["key"])
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def tls_report_of(mail):
    """(headers, JSON report) of a TLS-RPT mail (RFC 8460 §5.3)."""
    msg = email.message_from_bytes(mail["data"], policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1, [p.get_content_type() for p in msg.walk()]
    return msg, json.loads(gzip.decompress(parts[0].get_payload(decode=True)))


def test_tls_rpt_reports_each_domains_sessions_by_mail_and_https(zone, tmp_path):
    # Two MX hosts on one port (queue.mx_port), on two loopback addresses:
    # good.test's offers STARTTLS, plain.test's does not. Neither domain
    # publishes MTA-STS or DANE: the sessions are "no-policy-found".
    mx_tls = Sink(tls_context=server_context(certificate(tmp_path, "mx", names=["good.test"])))
    mx_plain = Sink(host="127.0.0.2", port=mx_tls.port)
    ca = certificate(tmp_path, "ca", ca=True)
    https = ReportReceiver(tmp_path, "reports.test", ca)
    zone.set("good.test", "127.0.0.1")
    zone.set("plain.test", "127.0.0.2")
    # Report mail goes to reports.test's MX: the TLS host, as good.test.
    zone.set("reports.test", "127.0.0.1")
    rua = f"v=TLSRPTv1; rua=mailto:tls@reports.test,https://reports.test:{https.port}/tlsrpt"
    zone.txt("_smtp._tls.good.test", rua)
    zone.txt("_smtp._tls.plain.test", rua)
    config = (f'[dns]\nnameservers = ["127.0.0.1:{zone.port}"]\ndane = false\n'
              f'[webhooks]\nallow_private_destinations = true\nca_file = "{ca["cert"]}"\n')
    queue = f'retry_initial = "1s"\nretry_max = "2s"\nmx_port = {mx_tls.port}'
    try:
        # The webhooks' exception for internal receivers is not the
        # reports': an https rua at an internal address (as an outsider's
        # _smtp._tls record can name) is refused until reports.* allows it.
        with tempfile.TemporaryDirectory() as d:
            p = Postern(d, mx_tls.port, extra_config=config, route_every_domain=False,
                        queue_config=queue).start()
            key = p.read_admin_key()
            try:
                assert send_as(p, key, "app@sender.test", "app@sender.test", rcpt="a@good.test")[0] == 250
                mx_tls.wait_for(1)
                out = wait_until(lambda: (o := p.cli("reports", "send-now").stdout) and "tls good.test" in o and o,
                                 what="a TLS-RPT pass")
                assert f"not sent tls good.test to https://reports.test:{https.port}/tlsrpt" in out, out
                assert "internal address" in out, out
                assert https.posts == []
            finally:
                p.stop()
        with mx_tls.handler.lock:
            mx_tls.handler.messages.clear()
        config += '[reports]\nallow_private_destinations = true\n'
        with tempfile.TemporaryDirectory() as d:
            p = Postern(d, mx_tls.port, extra_config=config, route_every_domain=False,
                        queue_config=queue).start()
            key = p.read_admin_key()
            try:
                assert send_as(p, key, "app@sender.test", "app@sender.test", rcpt="a@good.test")[0] == 250
                assert send_as(p, key, "app@sender.test", "app@sender.test", rcpt="b@plain.test")[0] == 250
                mx_tls.wait_for(1)
                mx_plain.wait_for(1)
                assert mx_tls.messages[0]["tls"] and mx_plain.messages[0]["tls"] is None

                # One pass (more if a session's record was not yet written
                # when one ran): a report per domain, by both routes.
                out = []
                wait_until(lambda: out.append(p.cli("reports", "send-now").stdout) or (
                    "".join(out).count("sent tls good.test") == 2 and "".join(out).count("sent tls plain.test") == 2),
                    what="both domains reported to both destinations")
                mails = wait_until(lambda: len(reports := [m for m in mx_tls.messages if "tls@reports.test" in m["rcpt_tos"]]) == 2 and reports,
                                   what="both report mails delivered")
            finally:
                p.stop()
    finally:
        mx_tls.stop()
        mx_plain.stop()
        https.stop()

    by_domain = {}
    for mail in mails:
        msg, report = tls_report_of(mail)
        domain = msg["TLS-Report-Domain"]
        # RFC 8460 §5.3: the fields, the content type and the subject.
        assert msg["TLS-Report-Submitter"] == "postern.test", msg["TLS-Report-Submitter"]
        assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt", msg["Content-Type"]
        assert msg["Subject"] == f"Report Domain: {domain} Submitter: postern.test Report-ID: <{report['report-id']}>", msg["Subject"]
        assert mail["mail_from"] in ("", "<>"), mail["mail_from"]
        by_domain[domain] = report
    assert sorted(by_domain) == ["good.test", "plain.test"], by_domain

    # The same reports were posted, gzipped, as application/tlsrpt+gzip.
    assert len(https.posts) == 2, https.posts
    posted = {}
    for path, content_type, body in https.posts:
        assert (path, content_type) == ("/tlsrpt", "application/tlsrpt+gzip"), (path, content_type)
        r = json.loads(gzip.decompress(body))
        posted[r["policies"][0]["policy"]["policy-domain"]] = r
    assert posted == by_domain

    # RFC 8460 §4.4, validated field by field.
    for domain, report in by_domain.items():
        assert report["organization-name"] == "postern.test"
        assert report["contact-info"] == "postmaster@postern.test"
        start = report["date-range"]["start-datetime"]
        end = report["date-range"]["end-datetime"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", start) and start <= end, (start, end)
        [policy] = report["policies"]
        assert policy["policy"]["policy-type"] == "no-policy-found", policy
        assert policy["policy"]["policy-domain"] == domain
    good = by_domain["good.test"]["policies"][0]
    assert good["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}, good
    assert good.get("failure-details", []) == [], good
    plain = by_domain["plain.test"]["policies"][0]
    assert plain["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}, plain
    [failure] = plain["failure-details"]
    assert failure["result-type"] == "starttls-not-supported", failure
    assert failure["receiving-mx-hostname"] == "plain.test" and failure["receiving-ip"] == "127.0.0.2", failure
    assert failure["failed-session-count"] == 1, failure
