//! Walks the event log for every enabled webhook and POSTs what is new.
//!
//! Each webhook keeps its position (`cursor`) in the store and moves it only
//! after the receiver answered 2xx: nothing is lost across failures or
//! restarts, and an event goes out twice only if the receiver took it but
//! its answer was lost (receivers de-duplicate on `sg_event_id`, as with
//! SendGrid). A failing URL is retried with exponential backoff; events it
//! has not taken after `webhooks.give_up_after` are skipped, logged and
//! counted, so one dead receiver never holds its account's events forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use postern_core::config::WebhooksConfig;
use postern_core::Event;
use postern_store::{EventFilter, Store, WebhookRecord};
use rand::Rng;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;

use super::destination::{DestinationPolicy, HostLookup, PolicyResolver};
use super::signing;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>;

/// Batches sent to one webhook per round before the others get a turn.
const BATCHES_PER_ROUND: usize = 20;

pub struct WebhookDispatcher {
    store: Arc<dyn Store>,
    config: WebhooksConfig,
    /// The destination policy and the lookup it resolves through; also the
    /// connector's resolver, so every connection is checked.
    guard: PolicyResolver,
    client: HttpsClient,
}

/// A failing webhook's backoff (in memory: after a restart every webhook is
/// tried at once, which is what an operator who restarted wants).
struct Backoff {
    failures: u32,
    next_try: Instant,
}

#[derive(Debug)]
enum Flush {
    /// Nothing new.
    Idle,
    /// Sent (or skipped) up to this position; there may be more.
    Advanced,
}

impl WebhookDispatcher {
    /// `lookup` resolves receivers' host names (`dns.nameservers`, or the
    /// system's resolver).
    pub fn new(
        store: Arc<dyn Store>,
        config: WebhooksConfig,
        lookup: Arc<dyn HostLookup>,
    ) -> Result<Self, String> {
        let guard = PolicyResolver::new(DestinationPolicy::from_config(&config), lookup);
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.ca_file {
            for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("webhooks.ca_file {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("webhooks.ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("webhooks.ca_file {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(guard.clone());
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Header names go out as SendGrid writes them
        // (X-Twilio-Email-Event-Webhook-Signature): receivers that look them
        // up case-sensitively still find them.
        let client = Client::builder(TokioExecutor::new())
            .http1_title_case_headers(true)
            .build(https);
        Ok(WebhookDispatcher {
            store,
            config,
            guard,
            client,
        })
    }

    /// What a URL must pass when it is set (its form, and where its host
    /// resolves now); delivery checks again at every connection.
    pub async fn check_destination(&self, url: &str) -> Result<http::Uri, String> {
        self.guard.check(url).await
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let this = self;
        let mut backoff: HashMap<String, Backoff> = HashMap::new();
        loop {
            let hooks = match this.store.list_webhooks().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks: could not list");
                    Vec::new()
                }
            };
            let now = Instant::now();
            let mut round = tokio::task::JoinSet::new();
            for hook in hooks
                .into_iter()
                .filter(|h| h.enabled && !h.kinds.is_empty())
            {
                if backoff.get(&hook.account).is_some_and(|b| b.next_try > now) {
                    continue;
                }
                let this = this.clone();
                round.spawn(async move {
                    let account = hook.account.clone();
                    (account, this.flush(hook).await)
                });
            }
            // Shutdown does not wait for slow receivers: an interrupted POST
            // has not moved its cursor, so it is simply sent again later.
            let settle = async {
                while let Some(joined) = round.join_next().await {
                    let Ok((account, result)) = joined else {
                        continue;
                    };
                    match result {
                        Ok(()) => {
                            backoff.remove(&account);
                        }
                        Err(error) => {
                            let b = backoff.entry(account.clone()).or_insert(Backoff {
                                failures: 0,
                                next_try: now,
                            });
                            b.failures += 1;
                            let wait = this.retry_delay(b.failures);
                            b.next_try = Instant::now() + wait;
                            tracing::warn!(%account, %error, failures = b.failures, retry_in = ?wait, "webhook delivery failed");
                            let at = postern_core::time::now_millis();
                            if let Err(e) = this.store.webhook_failed(account, error, at).await {
                                tracing::error!(error = %e, "webhooks: could not record a failure");
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = settle => {}
                _ = shutdown.wait_for(|s| *s) => {
                    round.abort_all();
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(this.config.flush_interval) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    }

    fn retry_delay(&self, failures: u32) -> Duration {
        retry_delay(self.config.retry_max, failures)
    }

    /// Sends everything new for one webhook, a batch at a time.
    async fn flush(&self, hook: WebhookRecord) -> Result<(), String> {
        let mut cursor = hook.cursor;
        for _ in 0..BATCHES_PER_ROUND {
            match self.flush_batch(&hook, cursor).await? {
                (Flush::Idle, _) => return Ok(()),
                (Flush::Advanced, to) => cursor = to,
            }
        }
        Ok(())
    }

    async fn flush_batch(&self, hook: &WebhookRecord, cursor: i64) -> Result<(Flush, i64), String> {
        let end = self
            .store
            .last_event_seq()
            .await
            .map_err(|e| e.to_string())?;
        if end <= cursor {
            return Ok((Flush::Idle, cursor));
        }
        let events = self
            .store
            .events(EventFilter {
                account: Some(hook.account.clone()),
                include_subusers: true,
                kinds: hook.kinds.clone(),
                after_seq: Some(cursor),
                limit: Some(self.config.batch_size),
                ..EventFilter::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = events.last().map(|e| e.seq) else {
            // Nothing of this account's up to `end`: skip the gap, so the
            // next look starts there.
            self.advance(hook, end).await?;
            return Ok((Flush::Idle, end));
        };
        match self.post(hook, &events).await {
            Ok(()) => {
                metrics::counter!("postern_webhook_events_total", "result" => "delivered")
                    .increment(events.len() as u64);
                self.advance(hook, last).await?;
                Ok((Flush::Advanced, last))
            }
            Err(error) => {
                let oldest = events.first().map(|e| e.at_millis).unwrap_or(0);
                let age = postern_core::time::now_millis() - oldest;
                if age > self.config.give_up_after.as_millis() as i64 {
                    metrics::counter!("postern_webhook_events_total", "result" => "given_up")
                        .increment(events.len() as u64);
                    tracing::error!(account = %hook.account, %error, events = events.len(), "webhook: giving up on events older than webhooks.give_up_after");
                    self.advance(hook, last).await?;
                }
                Err(error)
            }
        }
    }

    async fn advance(&self, hook: &WebhookRecord, to: i64) -> Result<(), String> {
        self.store
            .advance_webhook(hook.account.clone(), to, postern_core::time::now_millis())
            .await
            .map_err(|e| e.to_string())
    }

    /// One POST of a JSON array of events, signed when the webhook is.
    pub async fn post(&self, hook: &WebhookRecord, events: &[Event]) -> Result<(), String> {
        let body: Vec<serde_json::Value> = events.iter().map(Event::to_webhook_json).collect();
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        self.post_body(&hook.url, hook.signing_key.as_deref(), body)
            .await
    }

    /// POSTs `body` to `url` under the destination policy.
    pub async fn post_body(
        &self,
        url: &str,
        signing_key: Option<&[u8]>,
        body: Vec<u8>,
    ) -> Result<(), String> {
        self.post_typed(url, "application/json", signing_key, body)
            .await
    }

    /// As `post_body`, with another content type (a TLS-RPT report,
    /// RFC 8460 §5.4: `application/tlsrpt+gzip`).
    pub async fn post_typed(
        &self,
        url: &str,
        content_type: &str,
        signing_key: Option<&[u8]>,
        body: Vec<u8>,
    ) -> Result<(), String> {
        // The policy is checked at every send: the operator may have
        // tightened it since the URL was set.
        let uri = self.guard.policy().check_url(url)?;
        let timestamp = (postern_core::time::now_millis() / 1000).to_string();
        let mut request = http::Request::post(uri)
            .header(CONTENT_TYPE, content_type)
            .header(USER_AGENT, concat!("Postern/", env!("CARGO_PKG_VERSION")));
        if let Some(key) = signing_key {
            let signature = signing::sign(key, &timestamp, &body).map_err(|e| e.to_string())?;
            request = request
                .header(signing::TIMESTAMP_HEADER, &timestamp)
                .header(signing::SIGNATURE_HEADER, signature);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        // A POST that got no HTTP answer (an address the guard refused, a
        // certificate that did not verify, no connection, a timeout) is
        // counted as status "error", beside the answered ones below.
        let no_answer = |text: String| {
            metrics::counter!("postern_webhook_posts_total", "status" => "error").increment(1);
            text
        };
        let response = tokio::time::timeout(self.config.timeout, self.client.request(request))
            .await
            .map_err(|_| no_answer(format!("{url}: timed out")))?
            .map_err(|e| {
                // The connector's error hides the cause (a refused internal
                // address, a TLS failure) in its source chain.
                let mut text = format!("{url}: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                no_answer(text)
            })?;
        let status = response.status();
        metrics::counter!("postern_webhook_posts_total", "status" => status.as_u16().to_string())
            .increment(1);
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url}: HTTP {status}"))
        }
    }
}

/// TLS-RPT reports go out through the webhooks' client: the same
/// destination rules (`[webhooks]`: HTTPS only unless `allow_plain_http`,
/// no internal address unless `allow_private_destinations`, checked at
/// every connection), the same roots and time limit.
impl postern_mailauth::reports::ReportPoster for WebhookDispatcher {
    fn post<'a>(
        &'a self,
        url: &'a str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(self.post_typed(url, content_type, None, body))
    }
}

/// 1 s, 2 s, 4 s … up to `retry_max`, with ±20 % jitter so receivers
/// coming back are not hit by every sender at once.
fn retry_delay(retry_max: Duration, failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(20));
    let capped = base.min(retry_max);
    let factor = rand::rng().random_range(0.8..1.2);
    capped.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README: event webhooks are retried with backoff: the delay after
    /// the n-th failure in a row doubles from 1 s up to
    /// `webhooks.retry_max`, each within ±20 % (jitter).
    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let cap = Duration::from_secs(5);
        for (failures, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (64, 5.0)] {
            for _ in 0..100 {
                let d = retry_delay(cap, failures).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "after {failures} failures: {d} s"
                );
            }
        }
    }
}
