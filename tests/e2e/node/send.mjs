// Sends one message with nodemailer, configured from a JSON argument, and
// prints the server's reply. Exit code 0 on success, 1 on failure.
import nodemailer from "nodemailer";
import { readFileSync } from "node:fs";

const o = JSON.parse(process.argv[2]);
const auth =
  o.method === "XOAUTH2"
    ? { type: "OAuth2", user: o.user, accessToken: o.accessToken }
    : { user: o.user, pass: o.pass };
const transport = nodemailer.createTransport({
  host: "127.0.0.1",
  port: o.port,
  secure: !!o.secure,
  requireTLS: !o.secure,
  authMethod: o.method,
  auth,
  tls: { ca: [readFileSync(o.ca)], servername: "localhost" },
});
try {
  const info = await transport.sendMail({
    from: "sender@example.org",
    to: "rcpt@example.net",
    subject: o.subject,
    text: "sent by nodemailer",
  });
  console.log(info.response);
  process.exit(0);
} catch (e) {
  console.error(e.response || e.message);
  process.exit(1);
}
