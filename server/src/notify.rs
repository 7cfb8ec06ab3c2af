//! The relay's background duties: hearing of admin actions made by the
//! admin CLI (a revoke ends the user's live sessions at once, SPEC S4), and
//! delivering the durable outbox: notices on host agents and email by SMTP
//! (lettre), with retries and backoff, surviving restarts (SPEC S2, S3, B2).

use std::{sync::Arc, time::Duration};

use latchkey_protocol::frame::RelayToHost;
use lettre::{
    message::Mailbox, transport::smtp::authentication::Credentials, AsyncSmtpTransport,
    AsyncTransport, Message, Tokio1Executor,
};
use tracing::{info, warn};

use crate::{
    config::SmtpConfig,
    now_unix,
    store::{notice::ADMIN, OutboxRow, StoreError},
    Shared,
};

/// How often the relay looks for admin actions and due notices.
const TICK: Duration = Duration::from_millis(200);
/// Longest wait between two delivery attempts of one email.
const MAX_BACKOFF_SECS: i64 = 60;

/// Sends email through the configured server.
pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub(crate) fn new(cfg: &SmtpConfig) -> Result<Self, String> {
        let from: Mailbox = cfg.from.parse().map_err(|e| format!("smtp.from: {e}"))?;
        let builder = match cfg.tls.as_str() {
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
            "tls" => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(|e| e.to_string())?
            }
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)
                .map_err(|e| e.to_string())?,
            other => {
                return Err(format!(
                    "smtp.tls must be starttls, tls or none, not {other:?}"
                ))
            }
        };
        let mut builder = builder
            .port(cfg.port)
            .timeout(Some(Duration::from_secs(15)));
        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("bad address {to:?}: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .body(body.to_string())
            .map_err(|e| e.to_string())?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn crate::store::Store) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || f(&*store)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!("store: {e}");
            None
        }
        Err(_) => None,
    }
}

/// Runs until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mailer = shared
        .config
        .smtp
        .as_ref()
        .and_then(|cfg| match Mailer::new(cfg) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("email disabled: {e}");
                None
            }
        });
    let Some(mut last_event) = blocking(&shared, |s| s.last_event_id()).await else {
        tracing::error!("cannot read the audit log: revokes will not end live sessions and notices will not be sent");
        return;
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let after = last_event;
        for event in blocking(&shared, move |s| s.events_after(after, 1000))
            .await
            .unwrap_or_default()
        {
            last_event = event.id;
            if event.event == "revoke" {
                if let (Some(host), Some(user)) = (&event.host, &event.user) {
                    let ended = shared.end_sessions(
                        host,
                        user,
                        &format!("your shared access to '{host}' was revoked"),
                    );
                    if ended > 0 {
                        info!(%host, %user, sessions = ended, "revoked: live sessions ended");
                    }
                }
            }
        }
        let now = now_unix();
        for notice in blocking(&shared, move |s| s.due_notices(now, 50))
            .await
            .unwrap_or_default()
        {
            deliver(&shared, mailer.as_ref(), notice).await;
        }
    }
}

async fn deliver(shared: &Arc<Shared>, mailer: Option<&Mailer>, n: OutboxRow) {
    let now = now_unix();
    let id = n.id;
    let done =
        |state: &'static str| move |s: &dyn crate::store::Store| s.notice_done(id, state, now);
    let retry = |error: String, after: i64| {
        move |s: &dyn crate::store::Store| s.notice_retry(id, &error, now + after)
    };
    match n.channel.as_str() {
        "host" => {
            let tx = n
                .recipient
                .parse::<latchkey_protocol::ids::HostName>()
                .ok()
                .and_then(|host| shared.hosts().get(&host).map(|link| link.tx.clone()));
            let text = format!("{}: {}", n.subject, n.body.trim_end());
            match tx {
                Some(tx) if tx.try_send(RelayToHost::Notice(text)).is_ok() => {
                    blocking(shared, done("sent")).await;
                }
                // Offline: it waits for the agent to come back.
                _ => {
                    blocking(shared, retry("host offline".into(), 2)).await;
                }
            }
        }
        _ => {
            let address = if n.recipient == ADMIN {
                shared.config.admin_email.clone()
            } else {
                let who = n.recipient.clone();
                blocking(shared, move |s| s.user_email(&who))
                    .await
                    .flatten()
            };
            match (mailer, address) {
                (Some(mailer), Some(address)) => {
                    match mailer.send(&address, &n.subject, &n.body).await {
                        Ok(()) => {
                            info!(to = %n.recipient, subject = %n.subject, "notice emailed");
                            blocking(shared, done("sent")).await;
                        }
                        Err(e) => {
                            let backoff = 2i64
                                .saturating_pow(n.attempts.min(16))
                                .min(MAX_BACKOFF_SECS);
                            warn!(to = %n.recipient, attempt = n.attempts + 1, "email failed: {e}; retrying in {backoff} s");
                            blocking(shared, retry(e, backoff)).await;
                        }
                    }
                }
                (mailer, _) => {
                    let why = if mailer.is_none() {
                        "no SMTP configured"
                    } else {
                        "no email address"
                    };
                    info!(to = %n.recipient, subject = %n.subject, body = %n.body.trim_end(), "notice stored ({why})");
                    blocking(shared, done("stored")).await;
                }
            }
        }
    }
}
