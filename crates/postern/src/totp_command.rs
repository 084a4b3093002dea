//! `postern totp enroll|verify|disable`.

use anyhow::{bail, Result};
use postern_accounts::totp::{Totp, TotpOutcome};
use postern_core::Config;
use postern_store::StoreError;

use crate::account_command::audit;
use crate::cli::TotpCommand;

pub async fn run(config: &Config, command: TotpCommand) -> Result<()> {
    let store = crate::bootstrap::open_store(config)?;
    let totp = Totp::new(store.clone(), "Postern");
    match command {
        TotpCommand::Enroll { account, json } => {
            // The operator works on the data directory and needs no code
            // (over HTTP a code is required); replacing an active factor
            // is recorded as an operator action.
            if totp.active(&account).await? {
                audit(
                    &store,
                    "totp.reenroll.operator",
                    Some(&account),
                    "active second factor replaced by the operator, without a code".into(),
                )
                .await?;
            }
            let e = match totp.enroll(&account).await {
                Ok(e) => e,
                Err(StoreError::NotFound) => bail!("no account named {account}"),
                Err(e) => return Err(e.into()),
            };
            audit(
                &store,
                "totp.enroll",
                Some(&account),
                "enrolment started".into(),
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"secret": e.secret_base32, "uri": e.uri, "recovery_codes": e.recovery_codes})
                );
            } else {
                println!("secret:         {}", e.secret_base32);
                println!("uri:            {}", e.uri);
                println!("recovery codes: {}", e.recovery_codes.join(" "));
                eprintln!("Add the secret to an authenticator app, then run `postern totp verify {account} CODE`.");
                eprintln!("The recovery codes are shown only now; each works once.");
            }
        }
        TotpCommand::Verify { account, code } => {
            // The same attempt limit as the API (its state is in the store).
            let outcome = totp.verify(&account, &code).await?;
            let text = match &outcome {
                TotpOutcome::Confirmed => {
                    "code accepted: two-factor authentication is now active".to_owned()
                }
                TotpOutcome::Accepted => "code accepted".to_owned(),
                TotpOutcome::AcceptedRecoveryCode => {
                    "recovery code accepted (it cannot be used again)".to_owned()
                }
                TotpOutcome::Rejected { .. } => "code rejected".to_owned(),
                TotpOutcome::Locked { until } => format!(
                    "too many failed codes: refused until {}",
                    postern_core::time::rfc3339(*until)
                ),
                TotpOutcome::NotEnrolled => "this account has no second factor".to_owned(),
            };
            let kind = if outcome.accepted() {
                "totp.verify.success"
            } else {
                "totp.verify.failure"
            };
            audit(
                &store,
                kind,
                Some(&account),
                format!("purpose=verify {outcome:?}"),
            )
            .await?;
            if outcome == TotpOutcome::Confirmed {
                audit(
                    &store,
                    "totp.confirm",
                    Some(&account),
                    "second factor active".into(),
                )
                .await?;
            }
            if let TotpOutcome::Rejected {
                locked_until: Some(until),
            } = outcome
            {
                audit(
                    &store,
                    "totp.locked",
                    Some(&account),
                    format!(
                        "too many failed codes; refused until {}",
                        postern_core::time::rfc3339(until)
                    ),
                )
                .await?;
            }
            if !outcome.accepted() {
                bail!("{text}");
            }
            println!("{text}");
        }
        TotpCommand::Disable { account } => {
            if !totp.disable(&account).await? {
                bail!("{account} has no second factor");
            }
            // No code asked: the operator has the data directory. The
            // audit entry says so.
            audit(
                &store,
                "totp.disable",
                Some(&account),
                "second factor removed by the operator, without a code".into(),
            )
            .await?;
            println!("two-factor authentication removed for {account}");
        }
    }
    store.close();
    Ok(())
}
