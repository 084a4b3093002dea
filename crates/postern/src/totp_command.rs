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
            let outcome = totp.verify(&account, &code).await?;
            let (kind, ok, text) = match outcome {
                TotpOutcome::Confirmed => (
                    "totp.confirm",
                    true,
                    "code accepted: two-factor authentication is now active",
                ),
                TotpOutcome::Accepted => ("totp.verify", true, "code accepted"),
                TotpOutcome::AcceptedRecoveryCode => (
                    "totp.recovery_code",
                    true,
                    "recovery code accepted (it cannot be used again)",
                ),
                TotpOutcome::Rejected => ("totp.failure", false, "code rejected"),
                TotpOutcome::NotEnrolled => {
                    ("totp.failure", false, "this account has no second factor")
                }
            };
            audit(&store, kind, Some(&account), text.into()).await?;
            if !ok {
                bail!("{text}");
            }
            println!("{text}");
        }
        TotpCommand::Disable { account } => {
            if !totp.disable(&account).await? {
                bail!("{account} has no second factor");
            }
            audit(
                &store,
                "totp.disable",
                Some(&account),
                "second factor removed".into(),
            )
            .await?;
            println!("two-factor authentication removed for {account}");
        }
    }
    store.close();
    Ok(())
}
