"""DMARC aggregate (RFC 7489 §7.2) and TLS-RPT (RFC 8460) reports sent to
the company's own domains: built here as Google and Microsoft send them
(XML in a zip or gzip attachment; JSON gzip in a multipart/report with the
RFC 8460 §5.3 header fields), sent with smtplib to the mx listener, and
read back with the CLI and over HTTP, each tenant seeing only the reports
about its own domains."""

import email.policy
import gzip
import io
import json
import smtplib
import tempfile
import zipfile
from email.message import EmailMessage

from conftest import Postern, api, curl, metric, tenant

REPORTS = """
[reports]
receive_dmarc = ["dmarc@corp.test"]
receive_tlsrpt = ["tls-rpt@corp.test"]
"""


def dmarc_xml(org, report_id, domain, rows):
    """An aggregate report; rows: (source ip, count, disposition, dkim, spf)."""
    records = "".join(
        f"""<record><row><source_ip>{ip}</source_ip><count>{n}</count>
<policy_evaluated><disposition>{disp}</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated></row>
<identifiers><header_from>{domain}</header_from></identifiers>
<auth_results><dkim><domain>{domain}</domain><result>{dkim}</result><selector>pst1-ed</selector></dkim>
<spf><domain>{domain}</domain><result>{spf}</result></spf></auth_results></record>"""
        for ip, n, disp, dkim, spf in rows
    )
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
<report_metadata><org_name>{org}</org_name><email>noreply-dmarc-support@{org}</email>
<report_id>{report_id}</report_id><date_range><begin>1700006400</begin><end>1700092799</end></date_range></report_metadata>
<policy_published><domain>{domain}</domain><adkim>r</adkim><aspf>r</aspf><p>quarantine</p><sp>quarantine</sp><pct>100</pct></policy_published>
{records}
</feedback>
""".encode()


def dmarc_mail(org, report_id, domain, xml, packing):
    """The report mail: Google's shape (a zip attachment) or Microsoft's
    (a gzip one)."""
    m = EmailMessage()
    m["From"] = f"noreply-dmarc-support@{org}"
    m["To"] = "dmarc@corp.test"
    m["Subject"] = f"Report domain: {domain} Submitter: {org} Report-ID: <{report_id}>"
    m.set_content(f"This is an aggregate report from {org}.")
    stem = f"{org}!{domain}!1700006400!1700092799"
    if packing == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{stem}.xml", xml)
        m.add_attachment(buf.getvalue(), maintype="application", subtype="zip", filename=f"{stem}.zip")
    else:
        m.add_attachment(gzip.compress(xml), maintype="application", subtype="gzip", filename=f"{stem}.xml.gz")
    return m.as_bytes(policy=email.policy.SMTP)


TLSRPT = {
    "organization-name": "Google Inc.",
    "date-range": {"start-datetime": "2023-11-15T00:00:00Z", "end-datetime": "2023-11-15T23:59:59Z"},
    "contact-info": "smtp-tls-reporting@google.com",
    "report-id": "2023-11-15T00:00:00Z_corp.test",
    "policies": [{
        "policy": {
            "policy-type": "sts",
            "policy-string": ["version: STSv1", "mode: enforce", "mx: postern.test", "max_age: 604800"],
            "policy-domain": "corp.test",
            "mx-host": ["postern.test"],
        },
        "summary": {"total-successful-session-count": 120, "total-failure-session-count": 4},
        "failure-details": [
            {"result-type": "certificate-expired", "sending-mta-ip": "209.85.220.41",
             "receiving-mx-hostname": "postern.test", "failed-session-count": 3},
            {"result-type": "starttls-not-supported", "sending-mta-ip": "209.85.220.42",
             "receiving-mx-hostname": "postern.test", "failed-session-count": 1},
        ],
    }],
}


def tlsrpt_mail(report):
    """RFC 8460 §5.3: TLS-Report-Domain and -Submitter, multipart/report
    with report-type "tlsrpt", the JSON as application/tlsrpt+gzip."""
    m = EmailMessage()
    m["From"] = "noreply-smtp-tls-reporting@google.com"
    m["To"] = "tls-rpt@corp.test"
    m["Subject"] = "Report Domain: corp.test Submitter: google.com Report-ID: <2023-11-15T00:00:00Z_corp.test>"
    m["TLS-Report-Domain"] = "corp.test"
    m["TLS-Report-Submitter"] = "google.com"
    m.set_content("This is an aggregate TLS report from google.com")
    m.add_attachment(gzip.compress(json.dumps(report).encode()), maintype="application",
                     subtype="tlsrpt+gzip", filename="google.com!corp.test!1700006400!1700092799.json.gz")
    m.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"; boundary="%s"' % m.get_boundary())
    return m.as_bytes(policy=email.policy.SMTP)


def send(p, rcpt, body):
    """Unauthenticated, to the mx listener: (code, reply text)."""
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
        s.ehlo("mail-sor-f41.google.com")
        s.mail("noreply-dmarc-support@google.com")
        code, reply = s.rcpt(rcpt)
        assert code == 250, (code, reply)
        code, reply = s.data(body)
    return code, reply.decode()


def reports(p, *args):
    return json.loads(p.cli("reports", "list", "--json", *args).stdout)


def test_reports_are_parsed_summarised_stored_once_and_scoped(sink):
    google_rows = [
        ("192.0.2.10", 12, "none", "pass", "pass"),
        ("192.0.2.11", 4, "none", "fail", "pass"),   # aligned SPF: DMARC pass
        ("198.51.100.7", 5, "quarantine", "fail", "fail"),
        ("203.0.113.9", 3, "quarantine", "fail", "fail"),
    ]
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, relay_domains=("corp.test",),
                    relay_config='recipient_check = "any"', extra_config=REPORTS).start()
        p.read_admin_key()
        try:
            corp = tenant(p, "corp", "corp.test")
            rival = tenant(p, "rival", "rival.test")

            google = dmarc_mail("google.com", "1234567890123456789", "corp.test",
                                dmarc_xml("google.com", "1234567890123456789", "corp.test", google_rows), "zip")
            assert send(p, "dmarc@corp.test", google) == (250, "2.0.0 OK, report received")
            # The same report again (reporters resend): accepted, stored once.
            assert send(p, "DMARC@corp.test", google)[0] == 250
            microsoft = dmarc_mail(
                "enterprise.protection.outlook.com", "a1b2c3d4e5f6", "rival.test",
                dmarc_xml("enterprise.protection.outlook.com", "a1b2c3d4e5f6", "rival.test",
                          [("198.51.100.99", 7, "reject", "fail", "fail")]), "gzip")
            assert send(p, "dmarc@corp.test", microsoft)[0] == 250
            assert send(p, "tls-rpt@corp.test", tlsrpt_mail(TLSRPT))[0] == 250
            # A report that does not parse is refused with the reason, not
            # dropped in silence (the reporter's server keeps a bounce).
            broken = dmarc_mail("broken.example", "x1", "corp.test", b"<feedback><report_metadata>", "gzip")
            code, reply = send(p, "dmarc@corp.test", broken)
            assert code == 554 and reply.startswith("5.6.0 report not accepted: not a readable dmarc report"), reply

            # Consumed, not passed on: a message sent afterwards to a user
            # is the only one the internal server sees.
            send(p, "user@corp.test", b"Subject: hello\r\n\r\nafter the reports\r\n")
            sink.wait_for(1)
            assert [m["rcpt_tos"] for m in sink.messages] == [["user@corp.test"]]

            listed = reports(p)
            assert [(r["kind"], r["org"], r["policy_domain"]) for r in listed] == [
                ("tlsrpt", "Google Inc.", "corp.test"),
                ("dmarc", "enterprise.protection.outlook.com", "rival.test"),
                ("dmarc", "google.com", "corp.test"),
            ]
            g = listed[2]
            assert g["report_id"] == "1234567890123456789"
            assert (g["begin"], g["end"]) == ("2023-11-15T00:00:00.000Z", "2023-11-15T23:59:59.000Z")
            assert g["summary"]["messages"] == 24
            assert g["summary"]["dmarc"] == {"pass": 16, "fail": 8}
            assert g["summary"]["disposition"] == {"none": 16, "quarantine": 8, "reject": 0}
            assert g["summary"]["failing_sources"] == [
                {"ip": "198.51.100.7", "messages": 5}, {"ip": "203.0.113.9", "messages": 3},
            ]
            assert listed[1]["summary"]["disposition"] == {"none": 0, "quarantine": 0, "reject": 7}
            assert listed[0]["summary"]["policies"] == [{
                "policy_type": "sts", "policy_domain": "corp.test", "successful": 120, "failed": 4,
                "failures": {"certificate-expired": 3, "starttls-not-supported": 1},
            }]
            assert [r["org"] for r in reports(p, "--kind", "dmarc", "--domain", "corp.test")] == ["google.com"]
            shown = json.loads(p.cli("reports", "show", str(g["id"]), "--json").stdout)
            assert shown == g
            text = p.cli("reports", "show", str(g["id"])).stdout
            assert "org=google.com report_id=1234567890123456789" in text

            # Tenants: each sees the reports about the domains it holds.
            code, body = curl(p, "GET", "/v3/reports", key=corp)
            assert code == 200
            assert sorted(r["id"] for r in body["reports"]) == sorted([listed[0]["id"], g["id"]])
            code, body = api(p, rival, "GET", "/v3/reports?kind=dmarc")
            assert code == 200 and [r["id"] for r in body["reports"]] == [listed[1]["id"]]
            assert api(p, corp, "GET", f"/v3/reports/{g['id']}") == (200, g)
            # Another tenant's report is 404, as an id that never existed.
            assert api(p, corp, "GET", f"/v3/reports/{listed[1]['id']}")[0] == 404
            assert api(p, rival, "GET", f"/v3/reports/{g['id']}")[0] == 404
            assert api(p, rival, "GET", "/v3/reports/999999")[0] == 404

            assert metric(p, "postern_reports_received_total", kind="dmarc", result="stored") == 2
            assert metric(p, "postern_reports_received_total", kind="dmarc", result="duplicate") == 1
            assert metric(p, "postern_reports_received_total", kind="dmarc", result="refused") == 1
            assert metric(p, "postern_reports_received_total", kind="tlsrpt", result="stored") == 1
        finally:
            p.stop()


def test_report_addresses_must_be_at_domains_postern_knows(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config='[reports]\nreceive_dmarc = ["dmarc@sending.test"]\n')
        r = p.cli("serve", check=False)
        assert r.returncode != 0
        assert "reports.receive_dmarc[0]: sending.test is neither one of relay.domains" in r.stderr
        # Once `postern domain add` knows the domain (its printed rua can
        # point here), the server starts and takes reports for it.
        p.cli("domain", "add", "sending.test", "--account", "admin", check=False)
        p.start()
        try:
            xml = dmarc_xml("google.com", "77", "sending.test", [("192.0.2.1", 1, "none", "pass", "pass")])
            assert send(p, "dmarc@sending.test", dmarc_mail("google.com", "77", "sending.test", xml, "gzip"))[0] == 250
            assert [r["policy_domain"] for r in reports(p)] == ["sending.test"]
        finally:
            p.stop()
