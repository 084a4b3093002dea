//! Whether the resolver path supplies DNSSEC data Postern can validate, and
//! so whether DANE is in force.
//!
//! Many resolvers Postern is pointed at (forwarders, split-horizon company
//! DNS, test servers) do not pass RRSIGs on. Through them every answer looks
//! "bogus" to a validator, and treating that as RFC 7672 §2.1.1 bogus would
//! defer all MX mail until it expires. So the path is probed: the SOA of the
//! trust anchor's zone (the root for the built-in anchors) must validate
//! from those anchors (RFC 4035 §5: the SOA needs an RRSIG that verifies
//! with a DNSKEY that itself chains to the anchor), through the configured
//! name servers only, never the root servers directly.
//!
//! States: Unknown → Inactive or Active. Inactive: bogus answers count as
//! "no DNSSEC" and mail takes the usual TLS policy (MTA-STS still applies).
//! Active: only proven-bogus answers defer, as RFC 7672 §2.1.1 asks, and
//! Active is sticky for the life of the process — once the path has been
//! seen to validate, a later failure is what an on-path attacker stripping
//! signatures looks like, so it must not switch DANE off.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime};

use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::TokioResolver;
use tokio::sync::watch;

use crate::mx::Dnssec;

/// How often the path is probed again (a resolver change, or a path that
/// starts validating, is noticed within this).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(600);

/// Gauge: 1 while DANE is active, 0 while not (also before the first probe).
pub const METRIC_ACTIVE: &str = "postern_dane_active";
/// Counter of probes, labelled `result` = `secure` | `not_validated`.
pub const METRIC_PROBES: &str = "postern_dane_probe_total";

/// Whether DANE is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaneState {
    /// Not probed yet.
    Unknown,
    /// The path does not supply validatable DNSSEC data: DANE is not used.
    Inactive,
    /// The path has validated: DANE applies, for the life of the process.
    Active,
}

impl DaneState {
    pub fn as_str(self) -> &'static str {
        match self {
            DaneState::Unknown => "unknown",
            DaneState::Inactive => "inactive",
            DaneState::Active => "active",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            DaneState::Unknown => 0,
            DaneState::Inactive => 1,
            DaneState::Active => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            2 => DaneState::Active,
            1 => DaneState::Inactive,
            _ => DaneState::Unknown,
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The zone's SOA validated from the trust anchors.
    Secure,
    /// No answer, or one that did not validate (why).
    NotValidated(String),
}

impl ProbeResult {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ProbeResult::Secure => "secure",
            ProbeResult::NotValidated(_) => "not_validated",
        }
    }
}

/// The last probe and when it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub result: ProbeResult,
    pub at: SystemTime,
}

/// A snapshot for health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneStatus {
    pub state: DaneState,
    /// The zone probed ("." in service).
    pub zone: String,
    pub last: Option<ProbeReport>,
}

/// Where a probe's answer comes from: the validating resolver in service
/// (`TokioResolver`); the tests put a stand-in here to drive the periodic
/// task with a paused clock, which real network I/O cannot run under.
trait SoaLookup: Send + Sync {
    /// The validation proof of each SOA record of `zone` that came back,
    /// asked of the path afresh (no cached answer), or why none came back.
    fn soa_proofs<'a>(
        &'a self,
        zone: &'a Name,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Proof>, String>> + Send + 'a>>;
}

impl SoaLookup for TokioResolver {
    fn soa_proofs<'a>(
        &'a self,
        zone: &'a Name,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Proof>, String>> + Send + 'a>> {
        Box::pin(async move {
            self.clear_cache();
            let lookup = self
                .lookup(zone.clone(), RecordType::SOA)
                .await
                .map_err(|e| e.to_string())?;
            Ok(lookup
                .records()
                .iter()
                .filter(|r| r.record_type() == RecordType::SOA)
                .map(|r| r.proof())
                .collect())
        })
    }
}

/// Probes the resolver path and holds the resulting state.
pub struct DnssecProbe {
    /// A validating resolver of its own, with the same name servers and
    /// trust anchors as the one DANE lookups use; its cache is cleared
    /// before each probe so every probe asks the path again.
    resolver: Box<dyn SoaLookup>,
    zone: Name,
    state: AtomicU8,
    last: Mutex<Option<ProbeReport>>,
    /// One probe at a time (the periodic task and a first delivery may
    /// both want the first one).
    running: tokio::sync::Mutex<()>,
}

impl DnssecProbe {
    /// `zone`: the zone whose trust anchors `resolver` holds.
    pub fn new(resolver: TokioResolver, zone: Name) -> Self {
        Self::with_lookup(Box::new(resolver), zone)
    }

    fn with_lookup(resolver: Box<dyn SoaLookup>, zone: Name) -> Self {
        describe_metrics();
        metrics::gauge!(METRIC_ACTIVE).set(0.0);
        DnssecProbe {
            resolver,
            zone,
            state: AtomicU8::new(DaneState::Unknown.to_u8()),
            last: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn state(&self) -> DaneState {
        DaneState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn status(&self) -> DaneStatus {
        DaneStatus {
            state: self.state(),
            zone: self.zone.to_utf8(),
            last: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// The state, probing first if there has been no probe yet (so no
    /// delivery is decided in the Unknown state).
    pub async fn current(&self) -> DaneState {
        let state = self.state();
        if state != DaneState::Unknown {
            return state;
        }
        let _one = self.running.lock().await;
        if self.state() == DaneState::Unknown {
            self.probe_locked().await;
        }
        self.state()
    }

    /// Probes now and updates the state.
    pub async fn probe(&self) -> ProbeResult {
        let _one = self.running.lock().await;
        self.probe_locked().await
    }

    async fn probe_locked(&self) -> ProbeResult {
        let result = match self.resolver.soa_proofs(&self.zone).await {
            Ok(proofs) => {
                if proofs.is_empty() {
                    ProbeResult::NotValidated(format!("no SOA record for {} came back", self.zone))
                } else if proofs.iter().all(|p| *p == Proof::Secure) {
                    ProbeResult::Secure
                } else {
                    let worst = proofs
                        .iter()
                        .find(|p| **p != Proof::Secure)
                        .copied()
                        .unwrap_or(Proof::Indeterminate);
                    ProbeResult::NotValidated(format!(
                        "the SOA of {} did not validate ({worst})",
                        self.zone
                    ))
                }
            }
            Err(e) => ProbeResult::NotValidated(format!("SOA lookup for {}: {e}", self.zone)),
        };
        self.record(&result);
        result
    }

    fn record(&self, result: &ProbeResult) {
        metrics::counter!(METRIC_PROBES, "result" => result.label()).increment(1);
        let before = self.state();
        let after = match (before, result) {
            (_, ProbeResult::Secure) => DaneState::Active,
            // Sticky: see the module comment.
            (DaneState::Active, _) => DaneState::Active,
            _ => DaneState::Inactive,
        };
        self.state.store(after.to_u8(), Ordering::Release);
        metrics::gauge!(METRIC_ACTIVE).set(if after == DaneState::Active { 1.0 } else { 0.0 });
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(ProbeReport {
            result: result.clone(),
            at: SystemTime::now(),
        });
        let zone = self.zone.to_utf8();
        match (before, result) {
            (DaneState::Active, ProbeResult::Secure) => {
                tracing::debug!(%zone, "DNSSEC probe validated")
            }
            (_, ProbeResult::Secure) => tracing::info!(
                %zone,
                "DANE active: the resolver path supplies DNSSEC data that validates"
            ),
            (DaneState::Active, ProbeResult::NotValidated(why)) => tracing::warn!(
                %zone,
                reason = %why,
                "DNSSEC probe failed while DANE is active; DANE stays active and \
                 answers that fail validation still defer (RFC 7672 §2.1.1)"
            ),
            (DaneState::Unknown, ProbeResult::NotValidated(why)) => tracing::warn!(
                %zone,
                reason = %why,
                "DANE inactive: the resolver path does not supply DNSSEC data that \
                 validates; MX mail uses the usual TLS policy (MTA-STS, opportunistic)"
            ),
            (_, ProbeResult::NotValidated(why)) => {
                tracing::debug!(%zone, reason = %why, "DNSSEC probe: still not validating")
            }
        }
    }

    /// What a DANE lookup's answer means in the current state: while the
    /// path is not known to validate, "bogus" is what every answer looks
    /// like through a resolver that drops RRSIGs, so it means "no DNSSEC".
    /// Call after `current()` (the lookups in `MxResolver` do).
    pub fn admit<T>(&self, answer: Dnssec<T>, what: &str) -> Dnssec<T> {
        match answer {
            Dnssec::Bogus(e) if self.state() != DaneState::Active => {
                metrics::counter!("postern_dane_total", "result" => "bogus_while_inactive")
                    .increment(1);
                tracing::debug!(%what, error = %e, "DANE inactive: failed validation read as no DNSSEC");
                Dnssec::Insecure
            }
            other => other,
        }
    }

    /// Probes now and every `PROBE_INTERVAL` until `shutdown` turns true.
    pub async fn run(self: std::sync::Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.probe().await;
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Help text for the metrics (once per process, after the recorder is in).
fn describe_metrics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::describe_gauge!(
            METRIC_ACTIVE,
            "1 when DANE is in force (the resolver path supplies DNSSEC data that validates), else 0"
        );
        metrics::describe_counter!(
            METRIC_PROBES,
            "Probes of whether the resolver path supplies DNSSEC data that validates, by result"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// Answers every probe the same way and counts the probes.
    struct Counting {
        probes: Arc<AtomicUsize>,
        answer: Result<Vec<Proof>, String>,
    }

    impl SoaLookup for Counting {
        fn soa_proofs<'a>(
            &'a self,
            _zone: &'a Name,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<Proof>, String>> + Send + 'a>> {
            self.probes.fetch_add(1, Ordering::SeqCst);
            let answer = self.answer.clone();
            Box::pin(async move { answer })
        }
    }

    fn probe_answering(answer: Result<Vec<Proof>, String>) -> (Arc<DnssecProbe>, Arc<AtomicUsize>) {
        let probes = Arc::new(AtomicUsize::new(0));
        let lookup = Counting {
            probes: probes.clone(),
            answer,
        };
        (
            Arc::new(DnssecProbe::with_lookup(Box::new(lookup), Name::root())),
            probes,
        )
    }

    /// Lets the periodic task run until it waits on its timer again. The
    /// runtime has one thread and the stand-in lookup never waits, so a
    /// woken task is done within a couple of polls; 100 yields leave it far
    /// more than it needs, which is what makes the "no probe yet" checks
    /// below meaningful (the clock is paused, so no yield moves it).
    async fn let_the_task_run() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn probes_at_start_and_every_ten_minutes() {
        let (probe, probes) = probe_answering(Ok(vec![Proof::Secure]));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(probe.clone().run(stopped));

        let_the_task_run().await;
        assert_eq!(probes.load(Ordering::SeqCst), 1, "one probe at start");
        assert_eq!(probe.state(), DaneState::Active);

        // Up to a millisecond before the ten minutes: still one.
        tokio::time::advance(Duration::from_secs(600) - Duration::from_millis(1)).await;
        let_the_task_run().await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            1,
            "no second probe before ten minutes"
        );

        tokio::time::advance(Duration::from_millis(1)).await;
        let_the_task_run().await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            2,
            "the second at ten minutes"
        );

        // And so on, every ten minutes.
        tokio::time::advance(Duration::from_secs(599)).await;
        let_the_task_run().await;
        assert_eq!(probes.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        let_the_task_run().await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            3,
            "the third at twenty minutes"
        );

        // Shutdown ends the task without another probe. The clock is
        // paused and advances by itself only to the next timer, so the
        // one-second timeout cannot be reached by a task that ends.
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the probe task ends at shutdown")
            .expect("the probe task does not panic");
        assert_eq!(probes.load(Ordering::SeqCst), 3);
    }

    /// What the warning reports, as state: behind a resolver that drops
    /// DNSSEC data DANE is inactive, and the last probe says why.
    #[tokio::test(start_paused = true)]
    async fn a_path_that_does_not_validate_leaves_dane_inactive_and_says_why() {
        for (answer, why) in [
            (
                Ok(vec![Proof::Insecure]),
                "the SOA of . did not validate (Insecure)",
            ),
            (Ok(vec![]), "no SOA record for . came back"),
            (
                Err("request timed out".to_string()),
                "SOA lookup for .: request timed out",
            ),
        ] {
            let (probe, probes) = probe_answering(answer);
            assert_eq!(probe.state(), DaneState::Unknown, "not probed yet");
            let (_stop, stopped) = watch::channel(false);
            let task = tokio::spawn(probe.clone().run(stopped));
            let_the_task_run().await;
            assert_eq!(probes.load(Ordering::SeqCst), 1);
            let status = probe.status();
            assert_eq!(status.state, DaneState::Inactive, "{why}");
            assert_eq!(status.zone, ".");
            assert_eq!(
                status.last.map(|l| l.result),
                Some(ProbeResult::NotValidated(why.to_string()))
            );
            task.abort();
        }
    }
}
