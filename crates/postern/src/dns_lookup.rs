//! Postern's resolver as the record lookup for domain checks, as the
//! address lookup for webhook hosts, and as the DNS of the `mx` screening.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use postern_api::webhook::destination::{HostLookup, SystemLookup};
use postern_delivery::MxResolver;
use postern_mailauth::check::RecordLookup;
use postern_smtp::screen::{Query, ScreenDns};

pub struct ResolverLookup(pub MxResolver);

impl RecordLookup for ResolverLookup {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        rtype: &'static str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>> {
        Box::pin(async move {
            match rtype {
                "MX" => self.0.mx_records(name).await,
                _ => self.0.txt(name).await,
            }
        })
    }
}

impl ScreenDns for ResolverLookup {
    fn resolve<'a>(
        &'a self,
        query: &'a Query,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>> {
        Box::pin(async move {
            match query {
                Query::Ipv4(name) => self
                    .0
                    .ipv4(name)
                    .await
                    .map(|v| v.iter().map(ToString::to_string).collect()),
                Query::Ptr(ip) => self.0.ptr_names(*ip).await,
                Query::Addresses(host) => self
                    .0
                    .host_addresses(host)
                    .await
                    .map(|v| v.iter().map(ToString::to_string).collect()),
            }
        })
    }
}

/// The plain resolver on `[dns] nameservers` (the same construction as
/// delivery's), made once and shared by the `mx` screening and the domain
/// checks, so they share its cache.
pub fn plain_lookup(config: &postern_core::Config) -> anyhow::Result<Arc<ResolverLookup>> {
    let resolver = MxResolver::new(&config.dns.nameservers).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(ResolverLookup(resolver)))
}

/// The screening of `mx` clients, asking through `lookup`.
pub fn screener(
    config: &postern_core::Config,
    lookup: Arc<ResolverLookup>,
) -> Arc<postern_smtp::screen::Screener> {
    postern_smtp::screen::Screener::new(&config.screen, &config.server.hostname, lookup)
}

/// Webhook hosts resolve where the rest of Postern's names do: through
/// `dns.nameservers` when set, else through the system's resolver (which
/// also reads /etc/hosts, as an operator expects of a URL).
pub fn webhook_lookup(config: &postern_core::Config) -> anyhow::Result<Arc<dyn HostLookup>> {
    if config.dns.nameservers.is_empty() {
        return Ok(Arc::new(SystemLookup));
    }
    let resolver = MxResolver::new(&config.dns.nameservers).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(AddressLookup(resolver)))
}

struct AddressLookup(MxResolver);

impl HostLookup for AddressLookup {
    fn addresses<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .addresses(host)
                .await
                .map_err(|o| o.detail().to_owned())
        })
    }
}

/// Postern's host name and pool addresses, which the records name.
pub fn publishing(config: &postern_core::Config) -> postern_mailauth::records::Publishing {
    postern_mailauth::records::Publishing {
        mail_host: config.server.hostname.clone(),
        source_ips: config
            .ip_pool
            .iter()
            .flat_map(|p| p.address.iter().map(|a| a.ip))
            .collect(),
        mta_sts: postern_mailauth::mta_sts_policy::served_policies(
            &config.mta_sts,
            &config.server.hostname,
        ),
    }
}
