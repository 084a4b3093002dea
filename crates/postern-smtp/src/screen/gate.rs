//! The screening phase: between accepting a connection and sending the 220
//! greeting. The lookups start at once and run while the greeting is held
//! back (postscreen does its DNSBL lookups while it waits); a client that
//! sends anything before the greeting is a pregreeter.

use std::net::IpAddr;
use std::sync::Arc;

use postern_core::config::ScreenAction;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::dnsbl::Standing;
use super::{record_logged, record_refusal, Fcrdns, Screener};
use crate::reply::Reply;

/// What becomes of a client after screening.
#[derive(Debug)]
pub enum Admission {
    /// Greet it. `check_helo`: its HELO name is to be checked (not for an
    /// exempt or allowlisted client).
    Pass { check_helo: bool },
    /// RFC 5321 §3.1: greet it with this 554 instead of 220, then answer
    /// 503 to everything but QUIT.
    Refuse(Reply),
    /// Send this (if anything) and close at once: the client talked
    /// before the greeting, or went away.
    Drop(Option<Reply>),
}

/// Screens the client `ip` on `stream` before its greeting.
pub async fn admit<S: AsyncRead + Unpin>(
    screener: &Arc<Screener>,
    stream: &mut S,
    ip: IpAddr,
) -> Admission {
    let ip = ip.to_canonical();
    if screener.is_exempt(ip) {
        return Admission::Pass { check_helo: false };
    }
    let reject_fcrdns = screener.fcrdns_action() == ScreenAction::Reject;
    let lookups = {
        let screener = screener.clone();
        async move {
            let lists = async {
                if screener.has_lists() {
                    screener.dnsbl(ip).await
                } else {
                    Standing::Clean { score: 0 }
                }
            };
            let fcrdns = async {
                if reject_fcrdns {
                    Some(screener.fcrdns(ip).await)
                } else {
                    None
                }
            };
            tokio::join!(lists, fcrdns)
        }
    };
    tokio::pin!(lookups);
    let delay = screener.greet_delay();
    // A client that waited for the greeting lately is not held again
    // (postscreen's pass cache); its lookups still decide.
    let pregreet_check = !delay.is_zero() && !screener.passed_pregreet(ip);
    let held_until = tokio::time::sleep(delay);
    tokio::pin!(held_until);
    let mut held = pregreet_check;
    let mut outcome: Option<(Standing, Option<Fcrdns>)> = None;
    let mut early = [0u8; 512];
    // Until the greeting goes out: the delay must pass (or the client be
    // allowlisted) and the lookups must be done. Every lookup has its
    // time limit, so this ends.
    let (standing, fcrdns) = loop {
        if let Some((standing, fcrdns)) = &outcome {
            let allowlisted = matches!(standing, Standing::Allowlisted { .. });
            if !held || allowlisted {
                break (standing.clone(), fcrdns.clone());
            }
        }
        tokio::select! {
            biased;
            // RFC 5321 §3.1, §4.3.1: the client waits for the greeting
            // before it sends anything. Read only while checking for it,
            // so nothing the client sent is lost otherwise.
            read = stream.read(&mut early), if pregreet_check => {
                return match read {
                    Ok(n) if n > 0 => {
                        record_refusal(ip, "pregreet", &format!("sent {n} bytes before the greeting"));
                        Admission::Drop(Some(Reply::new(
                            554,
                            (5, 5, 1),
                            "Protocol error: talking before the greeting (RFC 5321 §3.1)",
                        )))
                    }
                    _ => Admission::Drop(None),
                };
            }
            done = &mut lookups, if outcome.is_none() => outcome = Some(done),
            _ = &mut held_until, if held => held = false,
        }
    };
    match standing {
        Standing::Allowlisted { score } => {
            tracing::debug!(peer = %ip, score, "screen: allowlisted");
            return Admission::Pass { check_helo: false };
        }
        Standing::Refused { score, zones } => {
            let zones = zones.join(", ");
            record_refusal(ip, "dnsbl", &format!("listed by {zones} (score {score})"));
            return Admission::Refuse(Reply::new(
                554,
                (5, 7, 1),
                format!("{ip} listed by {zones}"),
            ));
        }
        Standing::Clean { .. } => {}
    }
    match fcrdns {
        Some(result) if result.failed() => {
            record_refusal(ip, "fcrdns", &result.describe());
            // RFC 7372 §3.3: X.7.25, reverse DNS validation failed.
            return Admission::Refuse(Reply::new(
                554,
                (5, 7, 25),
                // PTR names come from the client's side of DNS: escaped,
                // so none can break the reply into lines.
                format!(
                    "{ip}: reverse DNS does not confirm the address ({})",
                    postern_core::printable::Printable(&result.describe())
                ),
            ));
        }
        Some(_) => {}
        None if screener.fcrdns_action() == ScreenAction::Log => {
            // Recorded only: nothing waits for it, so it runs beside the
            // session.
            let screener = screener.clone();
            tokio::spawn(async move {
                let result = screener.fcrdns(ip).await;
                log_fcrdns(ip, &result);
            });
        }
        None => {}
    }
    if pregreet_check {
        screener.remember_pregreet_pass(ip);
    }
    Admission::Pass { check_helo: true }
}

fn log_fcrdns(ip: IpAddr, result: &Fcrdns) {
    if result.failed() {
        record_logged(ip, "fcrdns", &result.describe());
    } else {
        tracing::debug!(peer = %ip, fcrdns = %result.describe(), "screen: reverse DNS");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use postern_core::config::{DnsblConfig, ScreenConfig};
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    use super::*;
    use crate::screen::testing::{dns, FakeDns};
    use crate::screen::Query;

    const CLIENT: &str = "192.0.2.7";

    fn screener(delay_ms: u64, dns: FakeDns, zones: &[(&str, i32)]) -> Arc<Screener> {
        let config = ScreenConfig {
            greet_delay: Duration::from_millis(delay_ms),
            lookup_timeout: Duration::from_secs(2),
            dnsbl: zones
                .iter()
                .map(|(z, w)| DnsblConfig {
                    zone: (*z).into(),
                    weight: *w,
                    codes: Vec::new(),
                })
                .collect(),
            ..ScreenConfig::default()
        };
        Screener::new(&config, "mx.postern.test", Arc::new(dns))
    }

    fn listing(zone: &str) -> (Query, Vec<String>) {
        (
            Query::Ipv4(format!("7.2.0.192.{zone}")),
            vec!["127.0.0.2".into()],
        )
    }

    async fn admit_quiet_client(s: &Arc<Screener>) -> (Admission, Duration) {
        let (mut server, _client) = tokio::io::duplex(1024);
        let start = Instant::now();
        // A bound of its own, so a screening that never ends fails here
        // (on the paused clock the minute passes at once) instead of
        // hanging the test.
        let admission = tokio::time::timeout(
            Duration::from_secs(60),
            admit(s, &mut server, CLIENT.parse().unwrap()),
        )
        .await
        .expect("admitted within a minute");
        (admission, start.elapsed())
    }

    /// The lookups run while the greeting is held back: an 800 ms answer
    /// under a 1 s delay is ready when the delay ends, so the client is
    /// refused at 1 s, not at 1.8 s as one after the other would take.
    #[tokio::test(start_paused = true)]
    async fn lookups_run_during_the_greeting_delay() {
        let s = screener(1000, dns(800, &[listing("bl.test")]), &[("bl.test", 1)]);
        let (admission, took) = admit_quiet_client(&s).await;
        match admission {
            Admission::Refuse(r) => {
                assert_eq!((r.code, r.esc), (554, (5, 7, 1)));
                assert_eq!(r.text, "192.0.2.7 listed by bl.test");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(took, Duration::from_millis(1000));
    }

    /// A list that never answers holds a client for the time limit and no
    /// longer, and counts as not listed.
    #[tokio::test(start_paused = true)]
    async fn a_dead_list_costs_at_most_the_time_limit() {
        let silent = FakeDns {
            mute_all: true,
            ..dns(0, &[])
        };
        let s = screener(1000, silent, &[("dead.test", 5)]);
        let (admission, took) = admit_quiet_client(&s).await;
        assert!(
            matches!(admission, Admission::Pass { check_helo: true }),
            "{admission:?}"
        );
        assert_eq!(took, Duration::from_secs(2), "the lookup_timeout");
        // Not cached: the next client asks again (and waits again).
        assert!(s.cache.is_empty());
    }

    /// An allowlisted client skips the rest of the delay (and the HELO
    /// checks), even though a block list lists it too.
    #[tokio::test(start_paused = true)]
    async fn an_allowlisted_client_is_greeted_without_waiting() {
        let answers = [listing("bl.test"), listing("wl.test")];
        let s = screener(1000, dns(10, &answers), &[("bl.test", 1), ("wl.test", -5)]);
        let (admission, took) = admit_quiet_client(&s).await;
        assert!(
            matches!(admission, Admission::Pass { check_helo: false }),
            "{admission:?}"
        );
        assert_eq!(took, Duration::from_millis(10));
    }

    /// A client that sends before the greeting is dropped with 554 5.5.1;
    /// with a delay of 0 there is no such check and what it sent is left
    /// for the session to read.
    #[tokio::test(start_paused = true)]
    async fn a_client_talking_first_is_refused_unless_the_check_is_off() {
        let s = screener(1000, dns(0, &[]), &[]);
        let (mut server, mut client) = tokio::io::duplex(1024);
        client.write_all(b"EHLO early.example\r\n").await.unwrap();
        let admission = admit(&s, &mut server, CLIENT.parse().unwrap()).await;
        match admission {
            Admission::Drop(Some(r)) => assert_eq!((r.code, r.esc), (554, (5, 5, 1))),
            other => panic!("{other:?}"),
        }

        let s = screener(0, dns(0, &[]), &[]);
        let (mut server, mut client) = tokio::io::duplex(1024);
        client.write_all(b"EHLO early.example\r\n").await.unwrap();
        let admission = admit(&s, &mut server, CLIENT.parse().unwrap()).await;
        assert!(
            matches!(admission, Admission::Pass { check_helo: true }),
            "{admission:?}"
        );
        let mut line = [0u8; 20];
        server.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"EHLO early.example\r\n");
    }

    /// A quiet client with no listing is greeted after the delay; an
    /// exempt one at once, whatever the lists say.
    #[tokio::test(start_paused = true)]
    async fn quiet_clients_wait_the_delay_and_exempt_ones_do_not() {
        let s = screener(1000, dns(5, &[]), &[("bl.test", 1)]);
        let (admission, took) = admit_quiet_client(&s).await;
        assert!(matches!(admission, Admission::Pass { check_helo: true }));
        assert_eq!(took, Duration::from_millis(1000));

        let s = screener(1000, dns(5, &[listing("bl.test")]), &[("bl.test", 1)]);
        let (mut server, _client) = tokio::io::duplex(1024);
        let start = Instant::now();
        let admission = admit(&s, &mut server, "127.0.0.9".parse().unwrap()).await;
        assert!(matches!(admission, Admission::Pass { check_helo: false }));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// A client that waited for the greeting once is greeted without the
    /// delay on its next connections, until `pregreet_pass_ttl` ends; its
    /// lookups still run (a listing found later still refuses it). A
    /// refused client is not remembered.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_waited_once_is_not_held_again_until_the_pass_expires() {
        let config = ScreenConfig {
            greet_delay: Duration::from_millis(1000),
            pregreet_pass_ttl: Duration::from_secs(60),
            dnsbl: vec![DnsblConfig {
                zone: "bl.test".into(),
                weight: 1,
                codes: Vec::new(),
            }],
            ..ScreenConfig::default()
        };
        let s = Screener::new(&config, "mx.postern.test", Arc::new(dns(5, &[])));
        let (admission, took) = admit_quiet_client(&s).await;
        assert!(matches!(admission, Admission::Pass { check_helo: true }));
        assert_eq!(took, Duration::from_millis(1000));
        let (admission, took) = admit_quiet_client(&s).await;
        assert!(matches!(admission, Admission::Pass { check_helo: true }));
        assert!(took < Duration::from_millis(100), "{took:?}");
        tokio::time::sleep(Duration::from_secs(61)).await;
        let (_, took) = admit_quiet_client(&s).await;
        assert_eq!(
            took,
            Duration::from_millis(1000),
            "held again once the pass expired"
        );

        // A listed client waits, is refused, and waits again next time.
        let listed = Screener::new(
            &config,
            "mx.postern.test",
            Arc::new(dns(5, &[listing("bl.test")])),
        );
        for _ in 0..2 {
            let (admission, took) = admit_quiet_client(&listed).await;
            assert!(matches!(admission, Admission::Refuse(_)));
            assert_eq!(took, Duration::from_millis(1000));
        }
    }
}
