//! Idle connections, for measuring what each one costs the server.

use std::time::Duration;

use anyhow::Result;

use crate::smtp;
use crate::Args;

/// Opens `n` connections and holds them: after the greeting for plaintext,
/// after the TLS handshake and EHLO with --starttls or --tls. Prints a JSON
/// line once all are open (the caller measures the server's memory then).
pub async fn hold(args: &Args, n: usize) -> Result<()> {
    let tls = smtp::tls_config()?;
    let mut conns = Vec::with_capacity(n);
    let mut errors = 0usize;
    let mut first_error = None;
    for _ in 0..n {
        let r = if args.starttls || args.tls {
            smtp::open(args, &tls).await
        } else {
            smtp::open_greeting_only(args).await
        };
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "idle_connections": conns.len(),
            "errors": errors,
            "first_error": first_error,
        })
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    drop(conns);
    Ok(())
}
