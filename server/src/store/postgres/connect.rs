//! How the store opens a connection to PostgreSQL: deadlines, so a dead
//! server or network fails fast instead of holding the relay's threads, and
//! TLS as the connection string asks (`sslmode`, `sslrootcert`), with the
//! server's certificate always verified. tokio-postgres refuses libpq's
//! `sslrootcert` and `verify-*` modes, so they are taken out of the string
//! here; every other setting goes to tokio-postgres as written. Errors
//! never quote the string: it may hold a password.

use std::{error::Error as StdError, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use postgres::{Client, NoTls};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// Deadlines for the client's connection attempt and for a peer that
/// vanished from the network (TCP keep-alives and the user timeout). A
/// server that stops answering on a Unix socket is the one case none of
/// these bounds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// The connection settings with this store's deadlines, where the
/// connection string sets none.
fn with_deadlines(mut config: postgres::Config) -> postgres::Config {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // The client's own default: two hours.
    if config.get_keepalives_idle() == postgres::Config::new().get_keepalives_idle() {
        config.keepalives_idle(TCP_KEEPALIVE_IDLE);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    config
}

/// libpq's `sslmode`, as far as tokio-postgres can follow it. Unlike
/// libpq, every mode that uses TLS verifies the server's certificate:
/// TLS with a certificate nobody checked stops only a passive listener, and
/// whoever can read this traffic can usually also sit in its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it (verified, name included), else plain
    /// text: tokio-postgres' default and libpq's. libpq's `allow` (plain
    /// first) is read as this: the same servers connect, except one whose
    /// certificate does not verify.
    Prefer,
    /// TLS or no connection. libpq checks neither the chain nor the name
    /// here; the relay checks both, as for `verify-full`.
    Require,
    /// TLS, the chain verified but not the server's name.
    VerifyCa,
    /// TLS, chain and name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(StoreError::Connection(
                    "sslmode must be disable, allow, prefer, require, verify-ca or verify-full"
                        .into(),
                ))
            }
        })
    }
}

/// The settings of the connection string that tokio-postgres does not read
/// (it refuses `sslrootcert` and the `verify-*` modes).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TlsParams {
    /// `sslmode`, as written.
    mode: Option<String>,
    /// `sslrootcert`: a PEM file of trusted roots, or `system`.
    root_cert: Option<String>,
}

impl TlsParams {
    /// Keeps the last value of a key, as libpq does.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.root_cert = Some(value),
            _ => return false,
        }
        true
    }
}

/// Splits `url` into the string tokio-postgres reads and the
/// [`TlsParams`] taken out of it. A string this cannot follow is returned
/// whole, for tokio-postgres to report what is wrong with it.
pub(super) fn take_tls_params(url: &str) -> (String, TlsParams) {
    let split = match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| url.starts_with(*p))
    {
        Some(_) => take_url_params(url),
        None => take_key_value_params(url),
    };
    split.unwrap_or_else(|| (url.to_owned(), TlsParams::default()))
}

/// The URL form: the parameters after the first `?` that follows the
/// credentials (as tokio-postgres reads it), `&`-separated and
/// percent-encoded.
fn take_url_params(url: &str) -> Option<(String, TlsParams)> {
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[after_credentials..].find('?') else {
        return Some((url.to_owned(), TlsParams::default()));
    };
    let (base, query) = url.split_at(after_credentials + q);
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    for pair in query[1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !params.take(&percent_decode(key)?, percent_decode(value)?) {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Some((rest, params))
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The key=value form: `key = value` pairs apart by white space, a value
/// either bare or in single quotes, `\` escaping the next character (the
/// grammar of libpq and tokio-postgres). Other pairs are kept as written.
fn take_key_value_params(url: &str) -> Option<(String, TlsParams)> {
    let mut params = TlsParams::default();
    let mut rest = String::with_capacity(url.len());
    let mut chars = url.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        while chars
            .next_if(|(_, c)| !c.is_whitespace() && *c != '=')
            .is_some()
        {}
        let key_end = chars.peek().map_or(url.len(), |&(i, _)| i);
        skip_ws(&mut chars);
        chars.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut chars);
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '\'')) if quoted => break,
                Some((_, c)) if !quoted && c.is_whitespace() => break,
                Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                Some((_, c)) => value.push(c),
                None if quoted => return None,
                None => break,
            }
        }
        let end = chars.peek().map_or(url.len(), |&(i, _)| i);
        if !params.take(&url[start..key_end], value) {
            rest.push_str(url[start..end].trim_end());
            rest.push(' ');
        }
    }
    Some((rest, params))
}

/// How the store opens a connection: tokio-postgres' settings, and the TLS
/// that the connection string asks for.
#[derive(Clone)]
pub(super) struct Connector {
    config: postgres::Config,
    /// `None` when TLS is off: `sslmode=disable`, or Unix sockets only.
    tls: Option<MakeRustlsConnect>,
    /// Where the trusted roots come from, for errors.
    roots: String,
}

impl Connector {
    /// Reads a connection string. Errors never quote it: it may hold a
    /// password.
    pub(super) fn new(url: &str) -> Result<Self, StoreError> {
        let (url, params) = take_tls_params(url);
        let mut config = with_deadlines(postgres::Config::from_str(&url)?);
        let mut mode = match &params.mode {
            Some(mode) => SslMode::parse(mode)?,
            None => SslMode::Prefer,
        };
        // libpq ignores sslmode on Unix sockets, where PostgreSQL offers no
        // TLS: `require` there would refuse every connection.
        if unix_sockets_only(&config) {
            mode = SslMode::Disable;
        }
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        });
        if mode == SslMode::Disable {
            return Ok(Self {
                config,
                tls: None,
                roots: String::new(),
            });
        }
        let (roots, described) = match params.root_cert.as_deref() {
            None | Some("system") => platform_roots(),
            Some(path) => (roots_from_file(path.into())?, format!("sslrootcert {path}")),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Connection(format!("TLS: {e}")))?;
        let tls = match mode {
            SslMode::VerifyCa => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly {
                    roots: Arc::new(roots),
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
            _ => builder.with_root_certificates(roots).with_no_client_auth(),
        };
        Ok(Self {
            config,
            tls: Some(MakeRustlsConnect::new(tls)),
            roots: described,
        })
    }

    pub(super) fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        };
        connected.map_err(|e| self.connect_error(e))
    }

    /// The server's own errors as they are (with their SQLSTATE); the
    /// client's with their causes, which its `Display` leaves out ("error
    /// performing TLS handshake" alone says nothing of the certificate).
    fn connect_error(&self, e: postgres::Error) -> StoreError {
        if e.as_db_error().is_some() {
            return StoreError::Postgres(e);
        }
        let mut message = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.ends_with(&text) {
                message = format!("{message}: {text}");
            }
            cause = c.source();
        }
        if let Some(rustls::Error::InvalidCertificate(_)) = rustls_cause(&e) {
            message = format!(
                "{message} (the server's TLS certificate was checked against {})",
                self.roots
            );
        }
        StoreError::Connection(message)
    }
}

/// The rustls error under a connection error, if any: tokio-postgres
/// wraps it in an `io::Error`, whose `source` skips it.
fn rustls_cause(e: &postgres::Error) -> Option<&rustls::Error> {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if inner.is_some() {
            return inner;
        }
        cause = c.source();
    }
    None
}

fn unix_sockets_only(config: &postgres::Config) -> bool {
    #[cfg(unix)]
    let unix = |h: &postgres::config::Host| matches!(h, postgres::config::Host::Unix(_));
    #[cfg(not(unix))]
    let unix = |_: &postgres::config::Host| false;
    !config.get_hosts().is_empty()
        && config.get_hostaddrs().is_empty()
        && config.get_hosts().iter().all(unix)
}

/// The platform's trusted roots (on Linux the system's CA bundle), and how
/// to name them in errors. None found is not an error here: a server that
/// offers no TLS still connects under `prefer`, and one that does fails its
/// handshake with an error that says where the roots came from.
fn platform_roots() -> (RootCertStore, String) {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("reading the platform's root certificates: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    let described = if added == 0 {
        "the platform's root certificates (none found; set sslrootcert)".to_string()
    } else {
        "the platform's root certificates".to_string()
    };
    (roots, described)
}

/// The roots in a PEM file (`sslrootcert`).
fn roots_from_file(path: PathBuf) -> Result<RootCertStore, StoreError> {
    let error =
        |why: String| StoreError::Connection(format!("TLS: sslrootcert {}: {why}", path.display()));
    let pem = std::fs::read(&path).map_err(|e| error(format!("cannot be read: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| error(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| error(format!("not a usable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(error("holds no certificate".into()));
    }
    Ok(roots)
}

/// `verify-ca`: the server's chain must lead to a trusted root, but its
/// name is not checked (for servers reached by an address their
/// certificate does not name). The handshake's signatures are checked as
/// always.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::{take_tls_params, TlsParams};

    #[test]
    fn tls_settings_are_taken_out_of_both_forms_and_the_rest_kept() {
        let (rest, params) = take_tls_params(
            r"host=h sslmode = verify-full password='a b\'c' sslrootcert='/x y/ca.crt' dbname=d",
        );
        assert_eq!(rest, r"host=h password='a b\'c' dbname=d ");
        assert_eq!(
            params,
            TlsParams {
                mode: Some("verify-full".into()),
                root_cert: Some("/x y/ca.crt".into()),
            }
        );
        let (rest, params) = take_tls_params(
            "postgres://u:p%3Fw@h:5/d?application_name=a&sslrootcert=%2Fca.crt&sslmode=require",
        );
        assert_eq!(rest, "postgres://u:p%3Fw@h:5/d?application_name=a");
        assert_eq!(params.mode.as_deref(), Some("require"));
        assert_eq!(params.root_cert.as_deref(), Some("/ca.crt"));
        let (rest, params) = take_tls_params("postgresql://h/d?sslmode=disable");
        assert_eq!(rest, "postgresql://h/d");
        assert_eq!(params.mode.as_deref(), Some("disable"));
        // What this cannot follow goes to tokio-postgres whole.
        let (rest, params) = take_tls_params("host=h password='unterminated");
        assert_eq!(rest, "host=h password='unterminated");
        assert_eq!(params, TlsParams::default());
    }
}
