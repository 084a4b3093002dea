//! Postern's resolver as the record lookup for domain checks.

use std::future::Future;
use std::pin::Pin;

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
