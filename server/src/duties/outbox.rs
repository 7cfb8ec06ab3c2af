//! The durable outbox (SPEC S2, S3, B2): notices on host agents and email
//! by SMTP (lettre), a few at a time, with retries and backoff, surviving
//! restarts. Each notice is claimed by one relay before it is sent (M6).

use std::{collections::HashMap, sync::Arc, time::Duration};

use latchkey_protocol::frame::RelayToHost;
use lettre::{
    message::{Mailbox, SinglePart},
    transport::smtp::authentication::Credentials,
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::{
    clock::now_unix,
    config::SmtpConfig,
    error::logged_store_call,
    state::Shared,
    store::{
        notice::{ADMIN, CONSOLE_ADMIN_PREFIX},
        OutboxRow, Store, StoreError,
    },
};

/// How often the relay looks for due notices.
const TICK: Duration = Duration::from_millis(200);
/// Notices being delivered at once: a slow mail server holds at most
/// this many of them, never the next one's turn for ever.
const DELIVERIES_IN_FLIGHT: usize = 8;

/// How long a claimed notice is this relay's to deliver: well beyond an
/// email's 15 s deadline, after which another relay may send it (at least
/// once, SPEC B2).
const CLAIM_SECS: i64 = 120;
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
        // Message-ID, Date, MIME-Version and a text/plain Content-Type:
        // spam filters count a message without them against it.
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(None)
            .date_now()
            .singlepart(SinglePart::plain(body.to_string()))
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
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    logged_store_call(&shared.store, f).await
}

/// Delivers the outbox until shutdown, [`DELIVERIES_IN_FLIGHT`] at a time.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mailer = shared
        .config
        .smtp
        .as_ref()
        .and_then(|cfg| match Mailer::new(cfg) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                warn!("email disabled: {e}");
                None
            }
        });
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deliveries: JoinSet<()> = JoinSet::new();
    // Notice ids being delivered, by task (a task that fails still frees its place).
    let mut in_flight: HashMap<tokio::task::Id, i64> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            Some(done) = deliveries.join_next_with_id(), if !deliveries.is_empty() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(e) => e.id(),
                };
                in_flight.remove(&task);
                continue;
            }
            _ = tick.tick() => {}
        }
        let room = DELIVERIES_IN_FLIGHT - in_flight.len();
        if room == 0 {
            continue;
        }
        let now = now_unix();
        let limit = room + in_flight.len();
        let claimed_until = now + CLAIM_SECS;
        for notice in blocking(&shared, move |s| s.claim_notices(now, claimed_until, limit))
            .await
            .unwrap_or_default()
        {
            if in_flight.len() >= DELIVERIES_IN_FLIGHT
                || in_flight.values().any(|id| *id == notice.id)
            {
                continue;
            }
            let id = notice.id;
            let (shared, mailer) = (shared.clone(), mailer.clone());
            let task = deliveries.spawn(async move {
                deliver(&shared, mailer.as_deref(), notice).await;
            });
            in_flight.insert(task.id(), id);
        }
    }
    // What is under way gets a moment to finish; the rest is retried after
    // a restart (the outbox is durable).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
}

async fn deliver(shared: &Arc<Shared>, mailer: Option<&Mailer>, n: OutboxRow) {
    let now = now_unix();
    let id = n.id;
    let done = |state: &'static str| move |s: &dyn Store| s.notice_done(id, state, now);
    let retry =
        |error: String, after: i64| move |s: &dyn Store| s.notice_retry(id, &error, now + after);
    match n.channel.as_str() {
        "host" => {
            let tx = n
                .recipient
                .parse::<latchkey_protocol::ids::HostName>()
                .ok()
                .and_then(|host| shared.hosts.tx(&host));
            let text = format!("{}: {}", n.subject, n.body.trim_end());
            match tx {
                Some(tx) if tx.try_send(Box::new(RelayToHost::Notice(text))).is_ok() => {
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
            } else if let Some(admin) = n.recipient.strip_prefix(CONSOLE_ADMIN_PREFIX) {
                let admin = admin.to_string();
                blocking(shared, move |s| s.admin_email(&admin))
                    .await
                    .flatten()
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
