//! Postern's resolver as the record lookup for domain checks and as the
//! address lookup for webhook hosts.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use postern_api::webhook::destination::{HostLookup, SystemLookup};
use postern_delivery::MxResolver;
use postern_mailauth::check::RecordLookup;

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
    }
}
