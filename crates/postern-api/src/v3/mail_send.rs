//! `POST /v3/mail/send` in SendGrid's shape: each personalization becomes
//! one message, built with mail-builder and handed to the same intake as
//! SMTP (sender checks, DKIM signing, durable queueing before the reply).
//! 202 with `X-Message-Id` when queued; SendGrid's error shape otherwise,
//! 403 when the sender is not verified for the account.
//!
//! Not supported yet (refused with 400 rather than ignored, so nobody
//! believes they happened): `template_id`, `send_at`/`batch_id`
//! (scheduling), substitutions. `categories`, `custom_args`, `asm`,
//! `tracking_settings` are accepted and not acted on.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use mail_builder::headers::address::Address as MimeAddress;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use postern_core::address::Address;
use postern_core::{Envelope, Recipient};
use postern_queue::{ClientInfo, IntakeError, Submission};
use serde::Deserialize;

use super::mail_fields as fields;
use super::mail_json::{
    Bounded, Headers, MailSettings, Present, Recipients, MAX_ATTACHMENTS, MAX_CONTENT,
    MAX_RECIPIENTS,
};
use crate::caller::Caller;
use crate::{ApiError, ApiState};

/// Largest request body: SendGrid's 30 MB. The built message is then held
/// to `limits.max_message_size`.
const BODY_LIMIT: usize = 30 * 1024 * 1024;

pub fn routes() -> Router<ApiState> {
    Router::new()
        // The body is read by the handler itself, within BODY_LIMIT and
        // the shared memory budget (see `read_body`).
        .route("/v3/mail/send", post(send))
}

#[derive(Deserialize, Clone)]
struct EmailObject {
    email: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Personalization {
    #[serde(default)]
    to: Recipients<EmailObject>,
    #[serde(default)]
    cc: Recipients<EmailObject>,
    #[serde(default)]
    bcc: Recipients<EmailObject>,
    from: Option<EmailObject>,
    subject: Option<String>,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    substitutions: Present,
    #[serde(default)]
    dynamic_template_data: Present,
    send_at: Option<i64>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

#[derive(Deserialize)]
struct Attachment {
    content: String,
    filename: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    disposition: Option<String>,
    content_id: Option<String>,
}

#[derive(Deserialize)]
struct MailSend {
    #[serde(default)]
    personalizations: Bounded<Personalization, MAX_RECIPIENTS>,
    from: Option<EmailObject>,
    reply_to: Option<EmailObject>,
    #[serde(default)]
    reply_to_list: Bounded<EmailObject, MAX_RECIPIENTS>,
    subject: Option<String>,
    #[serde(default)]
    content: Bounded<Content, MAX_CONTENT>,
    #[serde(default)]
    attachments: Bounded<Attachment, MAX_ATTACHMENTS>,
    template_id: Option<String>,
    #[serde(default)]
    headers: Headers,
    send_at: Option<i64>,
    batch_id: Option<String>,
    #[serde(default)]
    mail_settings: MailSettings,
}

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::field(StatusCode::BAD_REQUEST, field, message)
}

/// An email object as it goes into a header: the address as SMTP will
/// carry it (dot-atom local part, a domain; UTF-8 allowed, which makes the
/// message SMTPUTF8) and its display name (see mail_fields).
fn checked(
    (email_field, name_field): (&'static str, &'static str),
    e: &EmailObject,
) -> Result<Address, ApiError> {
    if let Some(name) = &e.name {
        fields::display_name(name_field, name)?;
    }
    fields::email(email_field, &e.email)
}

fn mime_address(e: &EmailObject) -> MimeAddress<'static> {
    match e.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => (name.to_owned(), e.email.trim().to_owned()).into(),
        None => e.email.trim().to_owned().into(),
    }
}

/// Header fields the caller may not set: those the message is built from,
/// and trace/authentication fields that only servers add.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "sender",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "received",
    "return-path",
    "dkim-signature",
    "authentication-results",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
];

/// RFC 5322 §2.2: a field name is printable ASCII except ':'; the value
/// must not break out of its field (no CR or LF).
fn header_pairs(global: &Headers, own: &Headers) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for (name, value) in global.iter().chain(own.iter()) {
        let Some(value) = value.as_str() else {
            return Err(bad(
                "headers",
                format!("the value of header {name:?} must be a string"),
            ));
        };
        fields::header_name("headers", name)?;
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad(
                "headers",
                format!(
                    "the {name} header cannot be set through headers; use the request's own field"
                ),
            ));
        }
        fields::text("headers", value)?;
        out.retain(|(n, _): &(String, String)| !n.eq_ignore_ascii_case(name));
        out.push((name.clone(), value.to_owned()));
    }
    Ok(out)
}

fn recipient(a: &Address) -> Recipient {
    Recipient {
        address: format!("{}@{}", a.local(), a.domain()),
        domain: a.domain().to_owned(),
        notify: Vec::new(),
        orcpt: None,
    }
}

/// One message ready for the intake.
struct Built {
    envelope: Envelope,
    body: Vec<u8>,
}

/// An attachment checked and decoded once per request, then shared by the
/// message of every personalization.
struct Decoded {
    kind: String,
    filename: String,
    disposition: Option<String>,
    content_id: Option<String>,
    data: Vec<u8>,
}

/// Checks every attachment's fields and decodes its content, once.
fn decode_attachments(req: &MailSend) -> Result<Vec<Decoded>, ApiError> {
    let mut out = Vec::with_capacity(req.attachments.len());
    for a in &req.attachments {
        let data = base64::engine::general_purpose::STANDARD
            .decode(a.content.trim())
            .map_err(|_| {
                bad(
                    "attachments.content",
                    format!("the content of {:?} is not base64", a.filename),
                )
            })?;
        fields::filename("attachments.filename", &a.filename)?;
        let kind = a
            .kind
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        fields::mime_type("attachments.type", &kind)?;
        if let Some(d) = &a.disposition {
            fields::disposition("attachments.disposition", d)?;
        }
        // Checked whether or not the part is inline: a content id is
        // never carried unchecked, whatever the builder does with it.
        if let Some(cid) = &a.content_id {
            fields::content_id("attachments.content_id", cid)?;
        }
        if a.disposition.as_deref() == Some("inline") && a.content_id.is_none() {
            return Err(bad(
                "attachments.content_id",
                "inline attachments need a content_id",
            ));
        }
        out.push(Decoded {
            kind,
            filename: a.filename.clone(),
            disposition: a.disposition.clone(),
            content_id: a.content_id.clone(),
            data,
        });
    }
    Ok(out)
}

fn build<'r>(
    req: &'r MailSend,
    p: &'r Personalization,
    attachments: &'r [Decoded],
    hostname: &str,
) -> Result<Built, ApiError> {
    let from = p.from.as_ref().or(req.from.as_ref()).ok_or_else(|| {
        bad(
            "from.email",
            "the from object must be provided for every email send",
        )
    })?;
    // Both from objects are checked, whichever is used (as the subjects).
    if let Some(f) = &req.from {
        checked(("from.email", "from.name"), f)?;
    }
    if let Some(f) = &p.from {
        checked(
            ("personalizations.from.email", "personalizations.from.name"),
            f,
        )?;
    }
    let from_addr = checked(("from.email", "from.name"), from)?;
    if p.to.is_empty() {
        return Err(bad(
            "personalizations.to",
            "each personalization needs at least one to address",
        ));
    }
    // Both subjects are checked, whichever is used: a request is refused
    // for any field that could break a header, not only the one written.
    if let Some(s) = &req.subject {
        fields::text("subject", s)?;
    }
    if let Some(s) = &p.subject {
        fields::text("personalizations.subject", s)?;
    }
    let subject = p
        .subject
        .as_deref()
        .or(req.subject.as_deref())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            bad(
                "subject",
                "the subject is required (globally or per personalization)",
            )
        })?;
    let mut recipients: Vec<Recipient> = Vec::new();
    for (field, name_field, list) in [
        ("personalizations.to", "personalizations.to.name", &p.to),
        ("personalizations.cc", "personalizations.cc.name", &p.cc),
        ("personalizations.bcc", "personalizations.bcc.name", &p.bcc),
    ] {
        for e in list {
            let a = checked((field, name_field), e)?;
            let r = recipient(&a);
            // SendGrid refuses duplicates across to/cc/bcc of one
            // personalization; one delivery per address is what is meant.
            if recipients
                .iter()
                .any(|x| x.address.eq_ignore_ascii_case(&r.address))
            {
                return Err(bad(
                    field,
                    format!("{} appears more than once in a personalization", r.address),
                ));
            }
            recipients.push(r);
        }
    }
    let message_id = format!("{}@{hostname}", postern_core::MessageId::generate());
    let mut builder = MessageBuilder::new()
        .from(mime_address(from))
        .to(p.to.iter().map(mime_address).collect::<Vec<_>>())
        .subject(subject.to_owned())
        .message_id(message_id)
        .date(postern_core::time::now_millis() / 1000);
    if !p.cc.is_empty() {
        builder = builder.cc(p.cc.iter().map(mime_address).collect::<Vec<_>>());
    }
    let mut reply_to: Vec<&EmailObject> = req.reply_to.iter().collect();
    reply_to.extend(req.reply_to_list.iter());
    if !reply_to.is_empty() {
        if let Some(r) = &req.reply_to {
            checked(("reply_to.email", "reply_to.name"), r)?;
        }
        for r in &req.reply_to_list {
            checked(("reply_to_list.email", "reply_to_list.name"), r)?;
        }
        builder = builder.reply_to(reply_to.iter().map(|r| mime_address(r)).collect::<Vec<_>>());
    }
    for (name, value) in header_pairs(&req.headers, &p.headers)? {
        builder = builder.header(name, Text::new(value));
    }
    let mut has_body = false;
    for c in &req.content {
        if c.value.is_empty() {
            return Err(bad("content.value", "content values must not be empty"));
        }
        match c.kind.to_ascii_lowercase().as_str() {
            "text/plain" => builder = builder.text_body(c.value.as_str()),
            "text/html" => builder = builder.html_body(c.value.as_str()),
            other => {
                return Err(bad(
                    "content.type",
                    format!(
                        "content type {other:?} is not supported (text/plain and text/html are)"
                    ),
                ))
            }
        }
        has_body = true;
    }
    if !has_body {
        return Err(bad(
            "content",
            "at least one content object (text/plain or text/html) is required",
        ));
    }
    for a in attachments {
        builder = match (a.disposition.as_deref(), &a.content_id) {
            (Some("inline"), Some(cid)) => {
                builder.inline(a.kind.as_str(), cid.as_str(), a.data.as_slice())
            }
            _ => builder.attachment(a.kind.as_str(), a.filename.as_str(), a.data.as_slice()),
        };
    }
    let body = builder
        .write_to_vec()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let smtputf8 = !from.email.is_ascii() || recipients.iter().any(|r| !r.address.is_ascii());
    Ok(Built {
        envelope: Envelope {
            mail_from: format!("{}@{}", from_addr.local(), from_addr.domain()),
            recipients,
            body_type: postern_core::envelope::BodyType::EightBitMime,
            smtputf8,
            envid: None,
            ret: None,
            return_path: None,
        },
        body,
    })
}

/// Each refusal names the field the client sent, so it knows what to drop.
fn unsupported(req: &MailSend) -> Result<(), ApiError> {
    if req.template_id.is_some() {
        return Err(bad(
            "template_id",
            "templates are not supported by this server",
        ));
    }
    const SCHEDULING: &str = "scheduled sending is not supported by this server";
    if req.send_at.is_some() {
        return Err(bad("send_at", SCHEDULING));
    }
    if req.batch_id.is_some() {
        return Err(bad("batch_id", SCHEDULING));
    }
    if req.personalizations.iter().any(|p| p.send_at.is_some()) {
        return Err(bad("personalizations.send_at", SCHEDULING));
    }
    if req.personalizations.iter().any(|p| p.substitutions.0) {
        return Err(bad(
            "personalizations.substitutions",
            "substitutions are not supported by this server",
        ));
    }
    if req
        .personalizations
        .iter()
        .any(|p| p.dynamic_template_data.0)
    {
        return Err(bad(
            "personalizations.dynamic_template_data",
            "dynamic template data is not supported by this server",
        ));
    }
    Ok(())
}

/// The shared body budget is spent: the client should retry shortly.
fn budget_spent() -> ApiError {
    metrics::counter!("postern_api_rejected_total", "reason" => "memory_budget").increment(1);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many messages are in progress on this server; try again shortly",
    )
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request is larger than {BODY_LIMIT} bytes (SendGrid's 30 MB limit)"),
    )
}

/// Reads the request body within `BODY_LIMIT`, covering it with `lease`
/// as it arrives (the declared length first, when there is one), so the
/// bytes of all requests in memory stay within the shared budget.
async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    lease: &mut postern_queue::BodyLease,
) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared {
        if n > BODY_LIMIT {
            return Err(too_large());
        }
        if !lease.cover(n) {
            return Err(budget_spent());
        }
    }
    let mut body = body;
    let mut out = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("reading the request: {e}"))
        })?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > BODY_LIMIT {
                return Err(too_large());
            }
            if !lease.cover(out.len() + data.len()) {
                return Err(budget_spent());
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// Everything the route does with a parsed request before the intake: the
/// request-wide checks, the attachments checked and decoded once, then
/// every personalization built (and so validated) and held to the size
/// limit, one at a time: `each` sees every built message before it is
/// dropped. A request is queued whole or not at all, as far as validation
/// goes. Returns the decoded attachments and the largest message's size.
fn prepare(
    req: &MailSend,
    hostname: &str,
    max_message_size: usize,
    mut each: impl FnMut(&Personalization, &Built),
) -> Result<(Vec<Decoded>, usize), ApiError> {
    if req.personalizations.is_empty() || req.personalizations.len() > MAX_RECIPIENTS {
        return Err(bad(
            "personalizations",
            "between 1 and 1000 personalizations are required",
        ));
    }
    unsupported(req)?;
    let total: usize = req
        .personalizations
        .iter()
        .map(|p| p.to.len() + p.cc.len() + p.bcc.len())
        .sum();
    if total > MAX_RECIPIENTS {
        return Err(bad(
            "personalizations",
            "at most 1000 recipients (to, cc and bcc) per request",
        ));
    }
    let attachments = decode_attachments(req)?;
    let mut largest = 0;
    for p in &req.personalizations {
        let b = build(req, p, &attachments, hostname)?;
        if b.body.len() > max_message_size {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the message is {} bytes; this server accepts at most {max_message_size}",
                    b.body.len(),
                ),
            ));
        }
        largest = largest.max(b.body.len());
        each(p, &b);
    }
    Ok((attachments, largest))
}

async fn send(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    caller.require("mail.send")?;
    let Some(mail) = &state.mail else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mail sending is not available on this node",
        ));
    };
    // What this request holds in memory, all of it leased from the budget
    // every door shares: the JSON (then the parsed request, about as big),
    // the decoded attachments, and one built message at a time. One lease
    // grows over all three, so the account's share of the budget never
    // splits a single request against itself.
    let budget = mail.intake.body_budget();
    let mut lease = budget.lease(postern_queue::Holder::Account(caller.account_id));
    let raw = read_body(&headers, body, &mut lease).await?;
    let request_bytes = raw.len();
    let req: MailSend = super::mail_json::parse(&raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid mail/send JSON: {e}"),
        )
    })?;
    drop(raw);
    let (attachments, largest) = prepare(
        &req,
        mail.intake.hostname(),
        mail.max_message_size,
        |_, _| {},
    )?;
    let attachment_bytes: usize = attachments.iter().map(|a| a.data.len()).sum();
    if !lease.cover(request_bytes + attachment_bytes) {
        return Err(budget_spent());
    }
    if req
        .mail_settings
        .sandbox_mode
        .as_ref()
        .and_then(|t| t.enable)
        == Some(true)
    {
        // SendGrid's sandbox: validated, not sent.
        return Ok(StatusCode::OK.into_response());
    }
    // With On-Behalf-Of, the message is the subuser's: its senders, its
    // send log, its quota.
    let mut principal = caller.principal.clone();
    principal.account = caller.account.clone();
    principal.account_id = caller.account_id;
    // Room for the largest message, taken before the first is queued: the
    // request never stops half-way for want of memory.
    if !lease.cover(request_bytes + attachment_bytes + largest) {
        return Err(budget_spent());
    }
    let mut first_id = None;
    for p in &req.personalizations {
        let b = build(&req, p, &attachments, mail.intake.hostname())?;
        let sub = Submission {
            envelope: b.envelope,
            principal: Some(principal.clone()),
            client: ClientInfo {
                ip: caller.ip,
                helo: "api".into(),
                protocol: "HTTP",
                tls: None,
            },
            body: b.body,
        };
        match mail.intake.submit(sub).await {
            Ok(id) => {
                first_id.get_or_insert(id);
            }
            Err(IntakeError::SenderRefused(reason)) => {
                return Err(ApiError::field(
                    StatusCode::FORBIDDEN,
                    "from",
                    format!(
                        "The from address does not match a verified Sender Identity: {reason}. Verify the domain (/v3/whitelabel/domains) or the address (/v3/verified_senders)."
                    ),
                ))
            }
            Err(e @ IntakeError::QuotaExceeded { .. }) => {
                return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))
            }
            Err(e @ IntakeError::NoRecipients) => return Err(bad("personalizations", e.to_string())),
            // InboundRefused is for mail without AUTH, which this door
            // never submits (every request has a principal).
            Err(
                e @ (IntakeError::Store(_)
                | IntakeError::BounceRefused(_)
                | IntakeError::ReportRefused(_)
                | IntakeError::InboundRefused(_)
                | IntakeError::InboundDeferred(_)),
            ) => {
                tracing::error!(error = %e, "mail/send: intake failed");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the message could not be queued; try again",
                ));
            }
        }
    }
    let mut headers = HeaderMap::new();
    if let Some(id) = first_id {
        if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
            headers.insert("x-message-id", v);
        }
    }
    Ok((StatusCode::ACCEPTED, headers).into_response())
}

/// The per-input function of the `mail_send` fuzz target (through
/// `crate::fuzzing`): the request body parsed as the route parses it,
/// then `prepare`, everything but the intake. What is
/// built must be what was validated: envelope addresses that parse, a
/// header section of CRLF lines holding only the fields the builder writes
/// and the request's own `headers`, each builder field once, and a header
/// From that the strict parser (which the sender check and DKIM act on)
/// reads back as the envelope sender.
/// Returns how many messages were built (0: refused).
pub(crate) fn fuzz_one(data: &[u8]) -> usize {
    let Ok(req) = super::mail_json::parse::<MailSend>(data) else {
        return 0;
    };
    let mut built = 0;
    let prepared = prepare(&req, "api.test", 1 << 20, |p, b| {
        check_built(b, &req, p);
        built += 1;
    });
    if prepared.is_err() {
        return 0;
    }
    built
}

fn check_built(b: &Built, req: &MailSend, p: &Personalization) {
    let e = &b.envelope;
    for a in std::iter::once(&e.mail_from).chain(e.recipients.iter().map(|r| &r.address)) {
        assert!(
            Address::parse(a, true).is_ok(),
            "built an envelope address that does not parse: {a:?}"
        );
        assert!(!a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;".contains(c)));
    }
    let Some(split) = b.body.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!("no empty line after the header section");
    };
    let head = &b.body[..split + 2];
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for line in head.split_inclusive(|&c| c == b'\n') {
        assert!(
            line.ends_with(b"\r\n")
                && !line[..line.len() - 2]
                    .iter()
                    .any(|&c| c == b'\r' || c == b'\n'),
            "header line without CRLF or with a bare CR/LF: {:?}",
            String::from_utf8_lossy(line)
        );
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            panic!(
                "header line without a field name: {:?}",
                String::from_utf8_lossy(line)
            );
        };
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        *counts.entry(name).or_default() += 1;
    }
    const WRITTEN: &[&str] = &[
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    ];
    for (name, n) in &counts {
        let requested = req
            .headers
            .keys()
            .chain(p.headers.keys())
            .any(|k| k.eq_ignore_ascii_case(name));
        assert!(
            WRITTEN.contains(&name.as_str()) || requested,
            "header field {name:?} that nobody asked for"
        );
        // The builder writes each of its fields once, and the request's
        // headers are deduplicated: a second one was smuggled in.
        assert_eq!(*n, 1, "header field {name:?} written {n} times");
    }
    let from = postern_mailauth::header_from::header_from(&b.body);
    let from = match from {
        Ok(Some(list)) if list.len() == 1 => list.into_iter().next().map(|m| m.address),
        other => panic!("header From not read back as one mailbox: {other:?}"),
    };
    let from = from.unwrap_or_default();
    assert!(
        from.eq_ignore_ascii_case(&e.mail_from),
        "header From read back as {from:?}, the envelope sender is {:?}",
        e.mail_from
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What the route does for the first personalization.
    fn build_first(req: &MailSend, hostname: &str) -> Result<Built, ApiError> {
        let attachments = decode_attachments(req)?;
        build(req, &req.personalizations[0], &attachments, hostname)
    }

    fn request(v: Value) -> MailSend {
        crate::v3::mail_json::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn builds_one_message_per_personalization() {
        let req = request(serde_json::json!({
            "personalizations": [{"to": [{"email": "a@example.net", "name": "Ann"}], "bcc": [{"email": "b@example.net"}]}],
            "from": {"email": "me@example.org", "name": "Me"},
            "subject": "Hello",
            "content": [{"type": "text/plain", "value": "hi"}, {"type": "text/html", "value": "<p>hi</p>"}],
            "headers": {"X-Campaign": "c1"},
            "attachments": [{"content": "aGVsbG8=", "filename": "h.txt", "type": "text/plain"}]
        }));
        let b = build_first(&req, "relay.test").unwrap();
        let text = String::from_utf8(b.body).unwrap();
        assert_eq!(b.envelope.mail_from, "me@example.org");
        assert_eq!(b.envelope.recipients.len(), 2, "to and bcc");
        assert!(text.contains("Subject: Hello\r\n"));
        assert!(text.contains("X-Campaign: c1\r\n"));
        assert!(
            !text.to_ascii_lowercase().contains("b@example.net"),
            "bcc stays out of the headers"
        );
        assert!(text.contains("h.txt"));
    }

    #[test]
    fn refuses_injection_and_reserved_headers() {
        let base = serde_json::json!({
            "personalizations": [{"to": [{"email": "a@example.net"}]}],
            "from": {"email": "me@example.org"},
            "subject": "Hello",
            "content": [{"type": "text/plain", "value": "hi"}]
        });
        let mut v = base.clone();
        v["headers"] = serde_json::json!({"X-A": "x\r\nBcc: evil@example.com"});
        let req = request(v);
        assert!(build_first(&req, "h").is_err());
        let mut v = base.clone();
        v["headers"] = serde_json::json!({"DKIM-Signature": "v=1"});
        let req = request(v);
        assert!(build_first(&req, "h").is_err());
        let mut v = base.clone();
        v["subject"] = serde_json::json!("a\r\nBcc: evil@example.com");
        let req = request(v);
        assert!(build_first(&req, "h").is_err());
        let mut v = base;
        v["personalizations"][0]["to"][0]["email"] =
            serde_json::json!("a@example.net>, evil@example.com");
        let req = request(v);
        assert!(build_first(&req, "h").is_err());
    }

    /// The field named in the 400 for `v` (None: built).
    fn refused_field(v: Value) -> Option<&'static str> {
        let req = request(v);
        build_first(&req, "h").err().map(|e| {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            e.field.unwrap_or("-")
        })
    }

    #[test]
    fn every_header_field_is_validated() {
        let base = serde_json::json!({
            "personalizations": [{"to": [{"email": "a@example.net", "name": "A"}]}],
            "from": {"email": "me@example.org", "name": "Me"},
            "subject": "Hello",
            "content": [{"type": "text/plain", "value": "hi"}],
            "attachments": [{"content": "aGVsbG8=", "filename": "logo.png", "type": "image/png",
                             "disposition": "inline", "content_id": "logo"}]
        });
        assert_eq!(refused_field(base.clone()), None);
        let inj = "x\r\nBcc: evil@example.com";
        let cases: &[(&str, &str)] = &[
            ("/attachments/0/content_id", "attachments.content_id"),
            ("/attachments/0/filename", "attachments.filename"),
            ("/attachments/0/type", "attachments.type"),
            ("/attachments/0/disposition", "attachments.disposition"),
            ("/from/name", "from.name"),
            ("/from/email", "from.email"),
            ("/subject", "subject"),
            ("/personalizations/0/to/0/name", "personalizations.to.name"),
            ("/personalizations/0/to/0/email", "personalizations.to"),
        ];
        for (pointer, field) in cases {
            let mut v = base.clone();
            *v.pointer_mut(pointer).unwrap() = Value::String(inj.into());
            assert_eq!(refused_field(v), Some(*field), "{pointer}");
        }
        // Fields that are absent from the base request.
        let added: &[(&str, Value, &str)] = &[
            (
                "/personalizations/0/subject",
                inj.into(),
                "personalizations.subject",
            ),
            (
                "/personalizations/0/cc",
                serde_json::json!([{"email": "c@example.net", "name": inj}]),
                "personalizations.cc.name",
            ),
            (
                "/personalizations/0/bcc",
                serde_json::json!([{"email": "b@example.net\r\n"}]),
                "personalizations.bcc",
            ),
            (
                "/personalizations/0/from",
                serde_json::json!({"email": "me@example.org", "name": inj}),
                "personalizations.from.name",
            ),
            (
                "/personalizations/0/headers",
                serde_json::json!({"X-A": "a\u{0}b"}),
                "headers",
            ),
            (
                "/headers",
                serde_json::json!({"X-A": "a\u{85}b"}),
                "headers",
            ),
            (
                "/reply_to",
                serde_json::json!({"email": "r@example.org", "name": inj}),
                "reply_to.name",
            ),
            (
                "/reply_to_list",
                serde_json::json!([{"email": "r@example.org\n"}]),
                "reply_to_list.email",
            ),
        ];
        for (pointer, value, field) in added {
            let mut v = base.clone();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            v.pointer_mut(if parent.is_empty() { "" } else { parent })
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert(key.to_owned(), value.clone());
            assert_eq!(refused_field(v), Some(*field), "{pointer}");
        }
        // Content ids that would break out of `<...>` without a line break.
        for cid in ["logo>, <x", "<logo>", "a b"] {
            let mut v = base.clone();
            v["attachments"][0]["content_id"] = cid.into();
            assert_eq!(refused_field(v), Some("attachments.content_id"), "{cid}");
        }
        // And a content id on a non-inline attachment is checked too.
        let mut v = base;
        v["attachments"][0]["disposition"] = "attachment".into();
        v["attachments"][0]["content_id"] = inj.into();
        assert_eq!(refused_field(v), Some("attachments.content_id"));
    }
}
