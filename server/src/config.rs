//! The relay's configuration: a TOML file, then environment overrides
//! (`LATCHKEY_RELAY_<KEY>`, e.g. `LATCHKEY_RELAY_LISTEN=[::]:4433`), then
//! command-line flags. Every default is documented where it is declared.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::rules::{account_lockout::ConsoleLockout, lockout};

/// Errors reading the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "LATCHKEY_RELAY_";

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the relay can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address to listen on. Default `0.0.0.0:4433`.
    pub listen: SocketAddr,
    /// Address devices should dial, written into invite tokens
    /// (`host:port`). Default: none, which means the address the relay last
    /// listened on, with `127.0.0.1` for an unspecified IP (fine on one
    /// machine; set this for devices elsewhere).
    pub public_addr: Option<String>,
    /// Directory for keys, certificate and the database. Default: the
    /// platform's data directory (`~/.local/share/latchkey-relay` on Linux).
    pub data_dir: Option<PathBuf>,
    /// Where users, hosts, grants, counts and the audit log live: `sqlite`
    /// (`relay.db` in the data directory) or a PostgreSQL connection string
    /// (`postgres://user:password@host/db`, or the `host=... dbname=...`
    /// form). Default `sqlite`.
    pub store: Option<String>,
    /// TCP address of the admin console (a web page for what `admin` does),
    /// or `off`. Plain HTTP is served only on a loopback address; any other
    /// address needs `admin_tls_cert` and `admin_tls_key`, or
    /// `admin_trusted_proxies` (a TLS proxy in front). Default
    /// `127.0.0.1:8080`.
    pub admin_listen: String,
    /// PEM certificate chain for the console's TLS. Default: none.
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key for the console's TLS. Default: none.
    pub admin_tls_key: Option<PathBuf>,
    /// Addresses of reverse proxies that terminate TLS for the console.
    /// Only their requests are served on a plain non-loopback listener, and
    /// only theirs may say who the client is (`X-Forwarded-For`, the last
    /// address) and that it used HTTPS (`X-Forwarded-Proto`). Default: none.
    pub admin_trusted_proxies: Vec<std::net::IpAddr>,
    /// The console's address as admins open it (`https://relay.example`),
    /// for setup links. Default: derived from `admin_listen`.
    pub admin_public_url: Option<String>,
    /// A console session ends after this many seconds without a request.
    /// Default 1,800.
    pub admin_session_idle_secs: u64,
    /// Failed console logins in a row that lock an admin account. Default 5.
    pub admin_login_lockout: u32,
    /// How long such a lock lasts, in seconds. Default 900.
    pub admin_lockout_secs: u64,
    /// Deadline for a whole handshake, from the first packet to the login
    /// verdict, in milliseconds. Default 10,000.
    pub handshake_timeout_ms: u64,
    /// Deadline for the first part of a handshake, from the first packet
    /// to a complete message 1, in milliseconds (never more than the whole
    /// handshake's). A real peer sends message 1 the moment QUIC is up, so
    /// this can be short: a stalled connection then gives its place back
    /// (and its peer retries) in seconds. Default 3,000.
    pub first_message_timeout_ms: u64,
    /// Most connections allowed in the handshake at once; more are refused.
    /// Default 512.
    pub max_unauthenticated: usize,
    /// New connections one source address may open in a burst. Default 40.
    pub per_source_burst: u32,
    /// New connections per second one source address earns back. Default 10.
    pub per_source_per_sec: f64,
    /// Tokens an outsider login (unknown user, foreign key, no grant) costs
    /// its source on top of the connection's one. Default 4.
    pub outsider_penalty: u32,
    /// Close a connection silent for this long, in milliseconds. Default
    /// 30,000 (clients and hosts send keep-alives every 10 s).
    pub idle_timeout_ms: u64,
    /// How long an invite token stays valid, in seconds. Default 86,400.
    pub invite_ttl_secs: u64,
    /// Failures that lock a new host (SPEC S6). Default 3.
    pub lockout_threshold: u32,
    /// Accept access codes stretched with the insecure test profile.
    /// Default false; only tests and benchmarks turn it on.
    pub allow_insecure_ksf: bool,
    /// Log format. Default text.
    pub log_format: LogFormat,
    /// Where lockout notices for the admin are emailed. Default: none.
    pub admin_email: Option<String>,
    /// Outgoing mail. Default: none, and notices are only stored (see
    /// `latchkey-relay admin outbox`) and logged.
    pub smtp: Option<SmtpConfig>,
    /// How long a parked session waits for a rebooting host (and how long
    /// its resume ticket lives), in seconds. Default 600.
    pub reboot_deadline_secs: u64,
    /// Shortest time between two reboots of one host, in seconds. Default 60.
    pub reboot_min_interval_secs: u64,
    /// How long sessions wait for a host whose agent dropped without a
    /// reboot (a restart or update, a network blip) before they end, in
    /// seconds; 0 ends them at once (SPEC R5). Default 60.
    pub host_grace_secs: u64,
    /// Least time between a login's message 1 and the relay's answer, in
    /// milliseconds, so an outsider's answer and a grant holder's take the
    /// same time (SPEC A4). Default 10.
    pub login_reply_floor_ms: u64,
    /// Audit rows older than this many days are deleted (once an hour);
    /// 0 keeps every row. Default 0.
    pub audit_keep_days: u64,
    /// Where Prometheus metrics are served (`/metrics`, plain HTTP, no
    /// login): `off`, `console` (on the admin console's listener), or an
    /// address of their own such as `127.0.0.1:9184`. Default `off`.
    pub metrics_listen: MetricsListen,
}

/// The `metrics_listen` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MetricsListen {
    /// No metrics endpoint (the default: it tells anyone who reaches it how
    /// busy the relay is, so an admin opts in).
    #[default]
    Off,
    /// `/metrics` on the admin console's listener.
    Console,
    /// `/metrics` on a plain-HTTP listener of its own at this address.
    Addr(SocketAddr),
}

/// A `metrics_listen` value that is none of the three forms.
#[derive(Debug, Error)]
#[error("metrics_listen must be 'off', 'console' or an address such as 127.0.0.1:9184")]
pub struct BadMetricsListen;

impl std::str::FromStr for MetricsListen {
    type Err = BadMetricsListen;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(Self::Off),
            "console" => Ok(Self::Console),
            addr => addr.parse().map(Self::Addr).map_err(|_| BadMetricsListen),
        }
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = BadMetricsListen;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MetricsListen> for String {
    fn from(m: MetricsListen) -> Self {
        match m {
            MetricsListen::Off => "off".into(),
            MetricsListen::Console => "console".into(),
            MetricsListen::Addr(a) => a.to_string(),
        }
    }
}

/// How the relay sends email.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Mail server name or address.
    pub host: String,
    /// Port. Default 587.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// Sender address, e.g. `Latchkey <latchkey@example.com>`.
    pub from: String,
    /// Login name, if the server wants one.
    pub username: Option<String>,
    /// Password, if the server wants one.
    pub password: Option<String>,
    /// `starttls` (default), `tls`, or `none` (plain text; for a local
    /// mail relay only).
    #[serde(default = "default_smtp_tls")]
    pub tls: String,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_smtp_tls() -> String {
    "starttls".into()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            public_addr: None,
            data_dir: None,
            store: None,
            admin_listen: "127.0.0.1:8080".into(),
            admin_tls_cert: None,
            admin_tls_key: None,
            admin_trusted_proxies: Vec::new(),
            admin_public_url: None,
            admin_session_idle_secs: 1_800,
            admin_login_lockout: 5,
            admin_lockout_secs: 900,
            handshake_timeout_ms: 10_000,
            first_message_timeout_ms: 3_000,
            max_unauthenticated: 512,
            per_source_burst: 40,
            per_source_per_sec: 10.0,
            outsider_penalty: 4,
            idle_timeout_ms: 30_000,
            invite_ttl_secs: 86_400,
            lockout_threshold: lockout::DEFAULT_THRESHOLD,
            allow_insecure_ksf: false,
            log_format: LogFormat::Text,
            admin_email: None,
            smtp: None,
            reboot_deadline_secs: 600,
            reboot_min_interval_secs: 60,
            host_grace_secs: 60,
            login_reply_floor_ms: 10,
            audit_keep_days: 0,
            metrics_listen: MetricsListen::Off,
        }
    }
}

/// A type error without the value it found: serde quotes it ("invalid
/// type: integer `12345678`, expected a string"), and it may be a password.
fn without_values(message: &str) -> String {
    let invalid = message.starts_with("invalid type: ") || message.starts_with("invalid value: ");
    match message.split_once(", expected") {
        Some((found, expected)) if invalid => {
            let kind = found
                .split(['`', '"', '\''])
                .next()
                .unwrap_or(found)
                .trim_end();
            format!("{kind}, expected{expected}")
        }
        _ => message.to_string(),
    }
}

impl Config {
    /// Reads `file` (if given) and applies `LATCHKEY_RELAY_*` overrides
    /// from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                // The message and place only: toml's own rendering quotes
                // the line, which may hold a password (`store`, `smtp`).
                text.parse::<toml::Table>().map_err(|e| {
                    let at = e.span().map_or(String::new(), |span| {
                        let before = text.get(..span.start).unwrap_or(&text);
                        let line = before.lines().count().max(1);
                        format!(" (line {line})")
                    });
                    ConfigError::Invalid(format!("{}: {}{at}", path.display(), e.message()))
                })?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(name) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            // The CLI reads these itself.
            if matches!(name.as_str(), "config") {
                continue;
            }
            // A TOML literal if it parses as one (numbers, booleans), else a string.
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            table.insert(name, parsed);
        }
        let config: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(without_values(e.message())))?;
        lockout::checked_threshold(config.lockout_threshold)
            .map_err(|why| ConfigError::Invalid(format!("lockout_threshold: {why}")))?;
        Ok(config)
    }

    /// [`Config::first_message_timeout_ms`] as a duration, at most the
    /// whole handshake's.
    pub fn first_message_timeout(&self) -> Duration {
        Duration::from_millis(self.first_message_timeout_ms.max(1)).min(self.handshake_timeout())
    }

    /// [`Config::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1))
    }

    /// [`Config::login_reply_floor_ms`] as a duration.
    pub fn login_reply_floor(&self) -> Duration {
        Duration::from_millis(self.login_reply_floor_ms)
    }

    /// [`Config::admin_listen`]: the console's address, or `None` for `off`.
    pub fn console_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.admin_listen.trim() {
            "off" | "" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                ConfigError::Invalid(
                    "admin_listen must be an address such as 127.0.0.1:8080, or off".into(),
                )
            }),
        }
    }

    /// The console's lockout rule.
    pub fn console_lockout(&self) -> ConsoleLockout {
        ConsoleLockout::new(self.admin_login_lockout, self.admin_lockout_secs)
    }

    /// [`Config::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:5000\"\nlockout_threshold = 5\n",
        )
        .unwrap();
        let env = vec![
            (
                "LATCHKEY_RELAY_LOCKOUT_THRESHOLD".to_string(),
                "4".to_string(),
            ),
            (
                "LATCHKEY_RELAY_PUBLIC_ADDR".to_string(),
                "relay.example:4433".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.lockout_threshold, 4);
        assert_eq!(c.public_addr.as_deref(), Some("relay.example:4433"));
        assert_eq!(
            c.handshake_timeout_ms,
            Config::default().handshake_timeout_ms
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let env = vec![("LATCHKEY_RELAY_LISTNE".to_string(), "x".to_string())];
        assert!(Config::load(None, env).is_err());
    }

    #[test]
    fn a_broken_file_is_reported_by_line_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:4433\"\nstore = \"postgres://u:SECRETPW@db/x\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("SECRETPW"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "[smtp]\nhost = \"mail\"\nfrom = \"a@b\"\npassword = 12345678\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a string"), "{err}");
        assert!(!err.contains("12345678"), "{err}");
        let env = vec![("LATCHKEY_RELAY_STORE".to_string(), "98765".to_string())];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(!err.contains("98765"), "{err}");
    }

    #[test]
    fn metrics_listen_is_off_console_or_an_address() {
        let load = |v: &str| {
            Config::load(
                None,
                vec![("LATCHKEY_RELAY_METRICS_LISTEN".to_string(), v.to_string())],
            )
            .map(|c| c.metrics_listen)
        };
        assert_eq!(Config::default().metrics_listen, MetricsListen::Off);
        assert_eq!(load("off").unwrap(), MetricsListen::Off);
        assert_eq!(load("console").unwrap(), MetricsListen::Console);
        assert_eq!(
            load("127.0.0.1:9184").unwrap(),
            MetricsListen::Addr("127.0.0.1:9184".parse().unwrap())
        );
        assert_eq!(
            load("[::1]:0").unwrap(),
            MetricsListen::Addr("[::1]:0".parse().unwrap())
        );
        let err = load("consol").unwrap_err().to_string();
        assert!(err.contains("metrics_listen must be"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "metrics_listen = 9184\n").unwrap();
        assert!(Config::load(Some(&path), Vec::new()).is_err());
        std::fs::write(&path, "metrics_listen = \"console\"\n").unwrap();
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(c.metrics_listen, MetricsListen::Console);
        assert_eq!(String::from(c.metrics_listen), "console");
    }
}
