//! Checking a domain's records and acting on the result, shared by
//! `postern domain verify` and `/v3/whitelabel/domains/{id}/validate`: a
//! domain becomes verified when every required record of its signing keys
//! is found; during a key rotation the new selector starts signing once its
//! records are found, and the replaced selector is kept published for the
//! configured overlap.

use std::time::Duration;

use postern_store::{DomainRecord, DomainStore, ReturnPathMode, StoreError};

use crate::check::{check_all, Checked, RecordLookup, Status};
use crate::records::{records_for, Publishing};

pub struct DomainCheck {
    pub checked: Vec<Checked>,
    /// The domain may be used for sending (verified before or now).
    pub valid: bool,
    /// It became verified by this check.
    pub newly_verified: bool,
    /// Other accounts' unverified claims on the same domain, deleted with
    /// their keys because this check proved ownership.
    pub retired_claims: Vec<DomainRecord>,
    /// The rotation's new selector, if it started signing with this check.
    pub promoted: Option<String>,
    /// A rotation whose new records are not all found yet.
    pub rotation_pending: Option<String>,
}

fn rotation_record(c: &Checked) -> bool {
    c.record.key.starts_with("next_")
}

pub async fn check_domain(
    store: &dyn DomainStore,
    d: &DomainRecord,
    publishing: &Publishing,
    report_to: Option<&str>,
    dns: &dyn RecordLookup,
    overlap: Duration,
) -> Result<DomainCheck, StoreError> {
    let checked = check_all(records_for(d, publishing, report_to), dns).await;
    let base_ok = checked
        .iter()
        .filter(|c| !rotation_record(c))
        .all(|c| !c.record.required || c.status == Status::Found);
    let now = postern_core::time::now_millis();
    let mut newly_verified = false;
    let mut retired_claims = Vec::new();
    if base_ok && d.verified_at.is_none() {
        // The records are published with this account's keys: ownership
        // is proven, and competing claims go (Conflict if another account
        // verified first).
        retired_claims = store
            .verify_domain(d.id, now, "dns".into())
            .await?
            .ok_or(StoreError::NotFound)?;
        newly_verified = true;
    }
    let valid = base_ok || d.verified_at.is_some();
    // The return path is used only while its MX and SPF are published:
    // found now → on (unless an operator set it), gone → off again.
    let return_path_found = ["mail_server", "subdomain_spf"].iter().all(|key| {
        checked
            .iter()
            .any(|c| c.record.key == *key && c.status == Status::Found)
    });
    let mode = match (return_path_found, d.return_path_mode) {
        (true, ReturnPathMode::Off) => Some(ReturnPathMode::FoundInDns),
        (false, ReturnPathMode::FoundInDns) => Some(ReturnPathMode::Off),
        _ => None,
    };
    if let Some(mode) = mode {
        store.set_return_path_mode(d.id, mode).await?;
    }
    let mut promoted = None;
    let mut rotation_pending = None;
    if let Some(next) = &d.next {
        let next_ok = checked
            .iter()
            .filter(|c| rotation_record(c))
            .all(|c| c.status == Status::Found);
        if next_ok && valid {
            let retire_at = now + overlap.as_millis() as i64;
            if store.promote_rotation(d.id, retire_at).await? {
                metrics::counter!("postern_dkim_rotations_total").increment(1);
                promoted = Some(next.selector.clone());
            }
        } else {
            rotation_pending = Some(next.selector.clone());
        }
    }
    Ok(DomainCheck {
        checked,
        valid,
        newly_verified,
        retired_claims,
        promoted,
        rotation_pending,
    })
}

/// The next selector base after `current`: its trailing number plus one
/// (`pst1` → `pst2`), or `2` appended; never one of `taken`.
pub fn next_selector(current: &str, taken: &[&str]) -> String {
    let digits = current.len() - current.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, number) = current.split_at(current.len() - digits);
    let mut n: u64 = number.parse().unwrap_or(1);
    loop {
        n += 1;
        let candidate = format!("{stem}{n}");
        if candidate != current && !taken.contains(&candidate.as_str()) {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_count_up() {
        assert_eq!(next_selector("pst1", &[]), "pst2");
        assert_eq!(next_selector("pst9", &["pst10"]), "pst11");
        assert_eq!(next_selector("mail", &[]), "mail2");
        assert_eq!(next_selector("s2023", &[]), "s2024");
    }
}
