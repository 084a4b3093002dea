//! `postern serve`: binds every listener, starts the scheduler and the HTTP
//! listener, and shuts down gracefully on SIGTERM or SIGINT: stop accepting,
//! let sessions and deliveries in progress finish (up to
//! `server.shutdown_grace`), and never lose an acknowledged message (it is
//! durable before its 250 was sent).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use postern_accounts::Authenticator;
use postern_core::config::{ListenerRole, RecipientCheck};
use postern_core::Config;
use postern_delivery::{ClientSettings, MxResolver, Router, Scheduler, SmtpClient};
use postern_queue::{Intake, RetrySchedule};
use postern_smtp::{serve_listener, ConnectionLimiter, ListenerContext, SmtpContext};
use postern_store::QueueStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub async fn serve(config: Config) -> Result<()> {
    init_logging();
    // Before any listener is bound: a SIGTERM that arrives while the
    // server is still starting (its ports may already accept) is kept for
    // the shutdown below, instead of meeting the default action, which
    // kills the process mid-start.
    let mut signals = ShutdownSignals::register();
    // Durations as Prometheus histograms (buckets from 5 ms to a day), so
    // they aggregate across nodes.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0, 14400.0, 86400.0,
            ],
        )
        .context("metrics buckets")?
        // rspamd's scores: its default thresholds are 6 (add header) and
        // 15 (reject); ham scores below zero.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("postern_spam_score".into()),
            &[-5.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0],
        )
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;

    let store = crate::bootstrap::open_store(&config)?;
    let released = store.release_all_leases().await?;
    if released > 0 {
        tracing::info!(
            released,
            "released delivery leases left by the previous run"
        );
    }
    let mut authenticator = Authenticator::new(store.clone(), &config.auth).await?;
    if !config.oauth_issuer.is_empty() {
        let verifier = postern_accounts::oauth::OAuthVerifier::load(&config.oauth_issuer)
            .await
            .map_err(|e| anyhow::anyhow!("oauth_issuer (JWKS): {e}"))?;
        authenticator = authenticator.with_oauth(verifier);
        if let Some(verifier) = authenticator.oauth() {
            if let Some(every) = verifier.refresh_interval() {
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        verifier.refresh().await;
                    }
                });
            }
        }
    }
    if let Some(secret) =
        crate::bootstrap::first_admin_key(&store, authenticator.api_keys()).await?
    {
        println!("Postern first start. Admin API key (shown once, store it now):\n{secret}");
        println!("Send mail with SMTP user name \"apikey\" and this key as the password.");
    }

    // One rustls config per certificate pair, shared by every connection.
    let default_pair = crate::bootstrap::default_tls_pair(&config)?;
    let mut tls_configs: HashMap<(PathBuf, PathBuf), TlsAcceptor> = HashMap::new();
    let mut listeners = Vec::new();
    // One screening (and one cache) for every mx listener; submission
    // listeners are never screened.
    let plain_lookup = crate::dns_lookup::plain_lookup(&config)?;
    let screener = if config.listener.iter().any(|l| l.role == ListenerRole::Mx) {
        Some(crate::dns_lookup::screener(&config, plain_lookup.clone()))
    } else {
        None
    };
    for (i, l) in config.listener.iter().enumerate() {
        let pair = match (&l.tls_cert, &l.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => default_pair.clone(),
        };
        let acceptor = match tls_configs.get(&pair) {
            Some(a) => a.clone(),
            None => {
                let server_config = postern_smtp::tls::server_config(&pair.0, &pair.1)
                    .with_context(|| format!("listener[{i}]: TLS certificate"))?;
                let a = TlsAcceptor::from(server_config);
                tls_configs.insert(pair, a.clone());
                a
            }
        };
        let socket = TcpListener::bind(l.address)
            .await
            .with_context(|| format!("listener[{i}]: cannot listen on {}", l.address))?;
        listeners.push((
            socket,
            Arc::new(ListenerContext {
                role: l.role,
                address: l.address,
                tls: Some(acceptor),
                allow_plaintext_auth: l.allow_plaintext_auth,
                auth_mechanisms: postern_smtp::mechanism_bits(&l.auth_mechanisms),
                screen: screener.clone().filter(|_| l.role == ListenerRole::Mx),
            }),
        ));
    }
    let http = match config.http.address {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("http.address: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let metrics_http = match config.http.metrics_address {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("http.metrics_address: cannot listen on {addr}"))?,
        ),
        None => None,
    };

    let config = Arc::new(config);
    // The key of the return-path tags (VERP); the same on every start, so
    // bounces of mail sent before a restart are still recognised.
    let verp = Arc::new(postern_core::verp::Verp::new(
        &postern_store::CredentialStore::secret(store.as_ref(), "verp", 32).await?,
    ));
    let intake = Intake::new(store.clone(), config.server.hostname.clone())
        .with_body_budget(postern_queue::BodyBudget::new(
            config.limits.body_memory_budget,
            config.limits.body_memory_share(),
        ))
        .with_quotas(postern_queue::Quotas::new(store.clone()))
        .with_sender_authority(Arc::new(postern_mailauth::SenderAuthority::new(
            store.clone(),
            config.smtp.require_verified_senders,
        )))
        .with_bounce_receiver(Arc::new(postern_mailauth::return_path::ReturnPaths::new(
            store.clone(),
            verp.clone(),
        )))
        .with_report_receiver(Arc::new(postern_mailauth::reports::ReportInbox::new(
            config.reports.clone(),
            store.clone(),
        )));
    check_report_domains(&config, store.as_ref()).await?;
    // Mail without AUTH on mx listeners: SPF, DKIM, DMARC and ARC, with
    // their own resolver on [dns] nameservers.
    let intake = if config.inbound_auth.enabled {
        let mut checks = postern_mailauth::inbound::InboundChecks::new(
            &config.inbound_auth,
            &config.dns.nameservers,
            &config.server.hostname,
        )
        .map_err(anyhow::Error::msg)?;
        if let Some(domain) = &config.inbound_auth.arc_seal_domain {
            checks = checks.with_arc_sealing(postern_mailauth::inbound::arc_seal::ArcSealing::new(
                store.clone(),
                domain,
            ));
        }
        // Each message evaluated under DMARC is recorded for the
        // aggregate reports (RFC 7489 §7.2).
        let checks = if config.reports.dmarc_aggregate {
            checks.with_dmarc_reports(store.clone())
        } else {
            checks
        };
        intake.with_inbound_authenticator(Arc::new(checks))
    } else {
        tracing::info!("inbound authentication off (inbound_auth.enabled = false)");
        intake
    };
    // Then its content: each check [content] configures, the URI lists
    // asking through the screening's resolver (one cache for both).
    let services = postern_content::Services {
        dns: plain_lookup.clone(),
        hostname: config.server.hostname.clone(),
    };
    let intake = match postern_content::ContentChecks::from_config(&config.content, &services)? {
        Some(checks) => {
            tracing::info!(checks = ?checks.names(), "inbound content checks on");
            intake.with_content_inspector(Arc::new(checks))
        }
        None => intake,
    };
    let wakeup = intake.wakeup();
    let bounce_intake = intake.clone();
    let senders = crate::sender_command::verification(&config, store.clone(), intake.clone());
    let mail_intake = intake.clone();
    let limiter = ConnectionLimiter::new(
        config.limits.max_connections,
        config.limits.max_connections_per_ip,
    );
    let recipients: Arc<dyn postern_smtp::RecipientVerifier> = match config.relay.recipient_check {
        RecipientCheck::Any => Arc::new(postern_smtp::AnyRecipient),
        RecipientCheck::List => Arc::new(postern_smtp::ListedRecipients::new(
            &config.relay.recipients,
        )),
        RecipientCheck::Callahead => {
            // Its own client: static routes only, so no DANE resolver.
            let probe_client = SmtpClient::new(
                ClientSettings {
                    mta_sts: false,
                    ..ClientSettings::from_config(&config)
                },
                Arc::new(MxResolver::new(&config.dns.nameservers).map_err(anyhow::Error::msg)?),
            )
            .map_err(anyhow::Error::msg)?;
            Arc::new(crate::callahead::CallAhead::new(
                Arc::new(probe_client),
                Router::new(&config.route),
                config.relay.callahead_cache,
            ))
        }
    };
    let ctx = Arc::new(SmtpContext {
        config: config.clone(),
        relay_domains: config.relay_domains().into_iter().collect(),
        intake,
        authenticator,
        limiter: limiter.clone(),
        recipients,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut listener_tasks = Vec::new();
    for (socket, lctx) in listeners {
        tracing::info!(role = ?lctx.role, address = %lctx.address, "SMTP listening");
        listener_tasks.push(tokio::spawn(serve_listener(
            socket,
            lctx,
            ctx.clone(),
            shutdown_rx.clone(),
        )));
    }
    let webhooks = Arc::new(
        postern_api::webhook::WebhookDispatcher::new(
            store.clone(),
            config.webhooks.clone(),
            crate::dns_lookup::webhook_lookup(&config)?,
        )
        .map_err(anyhow::Error::msg)?,
    );
    let webhook_task = tokio::spawn(webhooks.clone().run(shutdown_rx.clone()));
    // DKIM selectors replaced by a rotation are forgotten once their
    // overlap ends (the records printed for the domain stop listing them).
    let retire_store = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match postern_store::DomainStore::retire_previous(
                retire_store.as_ref(),
                postern_core::time::now_millis(),
            )
            .await
            {
                Ok(domains) => {
                    for domain in domains {
                        tracing::info!(%domain, "DKIM rotation: the replaced selector is retired; its records can be removed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "retiring replaced DKIM selectors failed"),
            }
        }
    });
    // Held inbound mail is deleted once its retention is over; the same
    // task keeps the held gauge current (the CLI changes it too).
    tokio::spawn(postern_queue::quarantine::run_retention(
        store.clone() as Arc<dyn postern_store::Store>,
        config.quarantine.retention,
        shutdown_rx.clone(),
    ));
    // The reports Postern sends, every reports.interval; TLS-RPT's https:
    // destinations through the webhooks' client under rules of their own.
    if config.reports.dmarc_aggregate || config.reports.tls_rpt {
        let reporter = postern_mailauth::reports::Reporter::new(
            &config.reports,
            &config.server.hostname,
            &config.dns.nameservers,
            config.inbound_auth.dns_timeout,
            store.clone(),
            bounce_intake.clone(),
        )?
        .with_poster(crate::reports_send_command::report_poster(
            &config,
            store.clone(),
        )?);
        tokio::spawn(Arc::new(reporter).run(config.reports.interval, shutdown_rx.clone()));
    }
    let resolver = Arc::new(
        if config.dns.dane {
            MxResolver::with_dnssec(&config.dns.nameservers, None)
                .map(|r| r.require_dane(config.dns.dane_required))
        } else {
            MxResolver::new(&config.dns.nameservers)
        }
        .map_err(anyhow::Error::msg)?,
    );
    let router = Arc::new(Router::new(&config.route));
    let dane_unused = if !config.dns.dane {
        Some(crate::dane_status::Unused::Off)
    } else if router.routes_every_domain() {
        Some(crate::dane_status::Unused::AllRouted)
    } else {
        None
    };
    match (resolver.dane_probe(), dane_unused) {
        // Whether DANE is in force is probed at start and every
        // PROBE_INTERVAL (postern_delivery::dnssec_probe). With a "*"
        // route no mail goes through MX: nothing to probe, and no DNS
        // traffic for it.
        (Some(probe), None) => {
            tokio::spawn(probe.run(shutdown_rx.clone()));
        }
        (Some(_), Some(_)) => {
            tracing::info!("DANE not probed: a \"*\" route sends every domain to a fixed next hop")
        }
        (None, _) => tracing::info!("DANE off (dns.dane = false)"),
    }
    let dane_health = Arc::new(crate::dane_status::DaneHealth {
        probe: resolver.dane_probe(),
        unused: dane_unused,
        required: config.dns.dane_required,
    });
    let api_state = postern_api::ApiState {
        store: store.clone(),
        authenticator: ctx.authenticator.clone(),
        metrics: Some(metrics),
        delivery_wakeup: Some(wakeup.clone()),
        webhooks: Some(webhooks),
        domains: Some(postern_api::DomainSupport {
            publishing: crate::dns_lookup::publishing(&config),
            dns: plain_lookup,
            rotation_overlap: config.senders.dkim_rotation_overlap,
        }),
        senders: Some(senders),
        mail: Some(postern_api::MailSupport {
            intake: mail_intake,
            max_message_size: config.limits.max_message_size,
        }),
        health: vec![dane_health],
    };
    let http_limits = postern_api::http_listener::HttpLimits::from_config(
        &config.http,
        config.server.shutdown_grace,
    );
    let mut http_apps = Vec::new();
    if let Some(socket) = metrics_http {
        http_apps.push((socket, postern_api::metrics_router(api_state.clone())));
    }
    if let Some(socket) = http {
        let with_metrics = config.http.metrics_address.is_none();
        http_apps.push((socket, postern_api::router(api_state, with_metrics)));
    }
    let http_tasks: Vec<_> = http_apps
        .into_iter()
        .map(|(socket, app)| {
            let rx = shutdown_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = postern_api::serve(socket, app, http_limits, rx).await {
                    tracing::error!(error = %e, "HTTP listener failed");
                }
            })
        })
        .collect();

    let client = SmtpClient::with_policy_store(
        ClientSettings::from_config(&config),
        resolver,
        Some(store.clone()),
    )
    .map_err(anyhow::Error::msg)?
    .with_verp(verp.clone());
    // Each TLS session to a recipient domain's MX is recorded for its
    // TLS-RPT report (RFC 8460).
    let client = if config.reports.tls_rpt {
        client.with_tls_reports(store.clone())
    } else {
        client
    };
    let scheduler = Scheduler {
        store: store.clone() as Arc<dyn QueueStore>,
        client: Arc::new(client),
        router,
        retry: RetrySchedule {
            initial: config.queue.retry_initial,
            max: config.queue.retry_max,
            max_age: config.queue.max_age,
        },
        concurrency: config.queue.concurrency,
        wakeup,
        bounces: Some(bounce_intake),
        suppressions: Some(store.clone()),
        shaping: postern_delivery::Shaping::from_config(&config),
        accounts: Some(store.clone()),
        // Bodies loaded for delivery get a bound of their own, the size of
        // the doors' budget.
        max_body_bytes: config.limits.body_memory_budget,
        unauthenticated_dsns: Arc::new(postern_delivery::dsn_limit::DsnLimiter::new(
            config.relay.dsn_per_address_per_hour,
            config.relay.dsn_per_hour,
        )),
    };
    let grace = config.server.shutdown_grace;
    let scheduler_task = tokio::spawn(scheduler.run(shutdown_rx.clone(), grace));
    tracing::info!(data_dir = %config.server.data_dir.display(), "Postern ready");

    signals.recv().await;
    tracing::info!("shutting down: no new connections; finishing sessions and deliveries");
    let _ = shutdown_tx.send(true);
    for t in listener_tasks {
        let _ = t.await;
    }
    let left = limiter.wait_idle(grace).await;
    if left > 0 {
        tracing::warn!(sessions = left, "sessions still open after the grace period; closing them (nothing they were told was accepted is lost)");
    }
    let _ = scheduler_task.await;
    let _ = webhook_task.await;
    for t in http_tasks {
        let _ = t.await;
    }
    store.close();
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, registered when made: a signal is kept from then
/// on until `recv` takes it.
struct ShutdownSignals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn register() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot handle SIGTERM"))
            .ok();
        let interrupt = signal(SignalKind::interrupt())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot handle SIGINT"))
            .ok();
        ShutdownSignals {
            terminate,
            interrupt,
        }
    }

    async fn recv(&mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.terminate) => {}
            _ = next(&mut self.interrupt) => {}
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text,
    // and the only escape sequences in it would be a peer's (which the
    // formatter escapes, and the fields that carry peer text escape too).
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Each `[reports]` address is at a relay domain (checked with the rest
/// of the configuration) or at a domain `postern domain add` knows: the
/// `rua` it prints must reach Postern, and mail for any other domain is
/// refused at RCPT (never an open relay), so a report sent there would
/// never arrive.
async fn check_report_domains(config: &Config, store: &dyn postern_store::Store) -> Result<()> {
    let relay = config.relay_domains();
    let mut known: Option<Vec<String>> = None;
    for (key, address) in config.reports.addresses() {
        let domain = postern_core::config::ReportsConfig::domain_of(&address);
        if relay.contains(&domain) {
            continue;
        }
        if known.is_none() {
            known = Some(
                postern_store::DomainStore::list_domains(store, None)
                    .await?
                    .into_iter()
                    .map(|d| d.domain.to_lowercase())
                    .collect(),
            );
        }
        if !known.as_ref().is_some_and(|k| k.contains(&domain)) {
            anyhow::bail!(
                "{key}: {domain} is neither one of relay.domains nor a domain added with `postern domain add`"
            );
        }
    }
    Ok(())
}
