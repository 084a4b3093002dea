//! Forward-confirmed reverse DNS (the "iprev" check of RFC 8601 §3): the
//! client's address has a PTR name, and that name's addresses include the
//! client's. A lookup that timed out or failed leaves the answer unknown,
//! which never refuses a client.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Answer, Query, Screener};

/// PTR names checked at most: as SPF caps its `ptr` mechanism (RFC 7208
/// §4.6.4), so a client cannot make us look up an unbounded list.
const MAX_PTR_NAMES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fcrdns {
    /// This PTR name resolves back to the client.
    Confirmed(String),
    /// The address has no PTR record (RFC 8601 §3: "fail").
    NoPtr,
    /// None of these PTR names resolves back to the client ("fail").
    Unconfirmed(Vec<String>),
    /// A lookup timed out or failed ("temperror"): neither pass nor fail.
    Unknown(String),
}

impl Fcrdns {
    /// True for the outcomes a `reject` setting refuses.
    pub fn failed(&self) -> bool {
        matches!(self, Fcrdns::NoPtr | Fcrdns::Unconfirmed(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Fcrdns::Confirmed(name) => format!("confirmed as {name}"),
            Fcrdns::NoPtr => "no PTR record".into(),
            Fcrdns::Unconfirmed(names) => {
                format!("PTR names {} do not resolve back to it", names.join(", "))
            }
            Fcrdns::Unknown(why) => format!("unknown ({why})"),
        }
    }
}

impl Screener {
    pub async fn fcrdns(self: &Arc<Self>, ip: IpAddr) -> Fcrdns {
        let ip = ip.to_canonical();
        let names = match self.lookup(Query::Ptr(ip)).await {
            Answer::Records(names) => names,
            Answer::TimedOut => return Fcrdns::Unknown("PTR lookup timed out".into()),
            Answer::Failed(e) => return Fcrdns::Unknown(format!("PTR lookup failed: {e}")),
        };
        if names.is_empty() {
            return Fcrdns::NoPtr;
        }
        let names: Vec<String> = names
            .into_iter()
            .map(|n| n.trim_end_matches('.').to_owned())
            .take(MAX_PTR_NAMES)
            .collect();
        let answers = self
            .lookup_all(names.iter().map(|n| Query::Addresses(n.clone())).collect())
            .await;
        let mut unknown = None;
        for (name, answer) in names.iter().zip(&answers) {
            match answer {
                Answer::Records(addresses) => {
                    let back = addresses
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok())
                        .any(|a| a.to_canonical() == ip);
                    if back {
                        return Fcrdns::Confirmed(name.clone());
                    }
                }
                Answer::TimedOut => unknown = Some(format!("address lookup of {name} timed out")),
                Answer::Failed(e) => {
                    unknown = Some(format!("address lookup of {name} failed: {e}"))
                }
            }
        }
        match unknown {
            Some(why) => Fcrdns::Unknown(why),
            None => Fcrdns::Unconfirmed(names),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use postern_core::config::ScreenConfig;

    use super::*;
    use crate::screen::testing::{dns, FakeDns};

    fn screener(fake: FakeDns) -> Arc<Screener> {
        let config = ScreenConfig {
            lookup_timeout: Duration::from_secs(2),
            ..ScreenConfig::default()
        };
        Screener::new(&config, "mx.postern.test", Arc::new(fake))
    }

    fn ptr(ip: &str, names: &[&str]) -> (Query, Vec<String>) {
        (
            Query::Ptr(ip.parse().unwrap()),
            names.iter().map(|n| n.to_string()).collect(),
        )
    }

    fn addresses(host: &str, ips: &[&str]) -> (Query, Vec<String>) {
        (
            Query::Addresses(host.into()),
            ips.iter().map(|n| n.to_string()).collect(),
        )
    }

    /// RFC 8601 §3: a PTR name whose addresses include the client passes
    /// (whichever of several names it is); none that does, or no PTR at
    /// all, fails.
    #[tokio::test(start_paused = true)]
    async fn a_ptr_name_must_resolve_back_to_the_client() {
        let s = screener(dns(
            1,
            &[
                ptr("192.0.2.7", &["other.test.", "good.test."]),
                addresses("other.test", &["192.0.2.99"]),
                addresses("good.test", &["2001:db8::1", "192.0.2.7"]),
                ptr("192.0.2.8", &["liar.test."]),
                addresses("liar.test", &["192.0.2.1"]),
                ptr("2001:db8::8", &["six.test"]),
                addresses("six.test", &["2001:db8::8"]),
            ],
        ));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            s.fcrdns(ip("192.0.2.7")).await,
            Fcrdns::Confirmed("good.test".into())
        );
        // A dual-stack listener's mapped client is its IPv4 address.
        assert_eq!(
            s.fcrdns(ip("::ffff:192.0.2.7")).await,
            Fcrdns::Confirmed("good.test".into())
        );
        assert_eq!(
            s.fcrdns(ip("2001:db8::8")).await,
            Fcrdns::Confirmed("six.test".into())
        );
        let liar = s.fcrdns(ip("192.0.2.8")).await;
        assert_eq!(liar, Fcrdns::Unconfirmed(vec!["liar.test".into()]));
        assert!(liar.failed());
        let none = s.fcrdns(ip("192.0.2.9")).await;
        assert_eq!(none, Fcrdns::NoPtr);
        assert!(none.failed());
    }

    /// A lookup that does not answer in time leaves the result unknown,
    /// which never counts as a failure.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_lookup_is_not_a_failure() {
        let mut fake = dns(1, &[ptr("192.0.2.7", &["slow.test."])]);
        fake.mute.insert(Query::Addresses("slow.test".into()));
        fake.mute.insert(Query::Ptr("192.0.2.8".parse().unwrap()));
        let s = screener(fake);
        for client in ["192.0.2.7", "192.0.2.8"] {
            let result = s.fcrdns(client.parse().unwrap()).await;
            assert!(matches!(result, Fcrdns::Unknown(_)), "{result:?}");
            assert!(!result.failed());
        }
    }

    /// At most ten PTR names are looked up, as SPF caps its `ptr`
    /// mechanism (RFC 7208 §4.6.4): a name past the tenth that would
    /// confirm is never asked.
    #[tokio::test(start_paused = true)]
    async fn at_most_ten_ptr_names_are_followed() {
        let names: Vec<String> = (0..11).map(|i| format!("n{i}.test")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = screener(dns(
            1,
            &[
                ptr("192.0.2.7", &refs),
                addresses("n10.test", &["192.0.2.7"]),
            ],
        ));
        let result = s.fcrdns("192.0.2.7".parse().unwrap()).await;
        assert_eq!(result, Fcrdns::Unconfirmed(names[..10].to_vec()));
    }
}
