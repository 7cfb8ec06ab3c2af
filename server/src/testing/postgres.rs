//! A private PostgreSQL server for tests, from the machine's own packages
//! (Debian's `postgresql`): `initdb` into a temporary directory, without
//! fsync, listening on a Unix socket there and on `127.0.0.1` with TLS (a
//! certificate for `localhost` from a CA made for this server alone). It
//! takes about a second and a half, and is stopped when the value is
//! dropped.
//!
//! Tests get TLS connection strings by default ([`TestPostgres::url_of`],
//! [`TestPostgres::fresh_database`]), so whatever runs on this server
//! (the store's tests, clusters of relays) checks the relay's TLS too.
//!
//! PostgreSQL refuses to run as root, so under root (as in CI) it runs as
//! the `postgres` account through `runuser`. Outside CI a test that cannot
//! start one is skipped with the reason printed; in CI (`CI` set) that is a
//! failure.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

/// A running test server; stopped on drop.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run as this account (root cannot run PostgreSQL), if any.
    account: Option<String>,
    /// The Unix socket's number and the TCP port on 127.0.0.1.
    port: u16,
    next_db: AtomicU32,
}

/// Attempts at finding a free TCP port: another process may take the one
/// chosen before PostgreSQL binds it.
const START_TRIES: u32 = 3;

/// Starts a server, or says why not: `None` outside CI, a panic in CI.
pub fn start_or_skip(test: &str) -> Option<TestPostgres> {
    super::needed_in_ci(test, "PostgreSQL", TestPostgres::start())
}

/// The directory of the newest installed PostgreSQL's programs.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("LATCHKEY_TEST_PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no /usr/lib/postgresql ({e}); install Debian's postgresql"))?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL server under /usr/lib/postgresql".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl TestPostgres {
    /// Creates and starts a server.
    pub fn start() -> Result<Self, String> {
        let mut why = String::new();
        for _ in 0..START_TRIES {
            match Self::start_once() {
                Ok(pg) => return Ok(pg),
                Err(e) => why = e,
            }
        }
        Err(why)
    }

    fn start_once() -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("latchkey-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let account = is_root().then(|| "postgres".to_string());
        if let Some(account) = &account {
            let status = Command::new("chown")
                .arg(format!("{account}:"))
                .arg(dir.path())
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!("cannot give {} to {account}", dir.path().display()));
            }
        }
        let port = free_port()?;
        let pg = Self {
            dir,
            bin,
            account,
            port,
            next_db: AtomicU32::new(0),
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "latchkey",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        pg.write_certificates()?;
        let options = format!(
            "-F -p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c max_connections=200",
            path_str(pg.dir.path())?
        );
        let log = pg.dir.path().join("server.log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-o",
                &options,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The TCP port on 127.0.0.1 (also the Unix socket's number).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM file of the CA that signed the server's certificate: what
    /// `sslrootcert` names in [`Self::url_of`].
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir().join(CA_FILE)
    }

    /// Makes a CA and a server certificate for `localhost` and writes them
    /// where PostgreSQL looks with `ssl=on` (`server.crt`, `server.key` in
    /// the data directory), owned by the server's account: PostgreSQL
    /// refuses a key that others may read.
    fn write_certificates(&self) -> Result<(), String> {
        let ca = TestCa::new("latchkey test PostgreSQL CA")?;
        let (cert, key) = ca.issue("localhost")?;
        let data = self.data_dir();
        for (name, pem) in [
            (CA_FILE, ca.pem()),
            ("server.crt", cert),
            ("server.key", key),
        ] {
            let path = data.join(name);
            write_private(&path, &pem)?;
            if let Some(account) = &self.account {
                let status = Command::new("chown")
                    .arg(format!("{account}:"))
                    .arg(&path)
                    .status()
                    .map_err(|e| format!("chown: {e}"))?;
                if !status.success() {
                    return Err(format!("cannot give {} to {account}", path.display()));
                }
            }
        }
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(program);
        let mut cmd = match &self.account {
            Some(account) => {
                let mut c = Command::new("runuser");
                c.args(["-u", account, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}{}",
                program.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The connection string of database `db`: TCP with TLS, the
    /// server's certificate verified against [`Self::ca_file`] and its
    /// name (`localhost`, reached at 127.0.0.1 whatever `localhost`
    /// resolves to).
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "{} sslmode=verify-full sslrootcert={}",
            self.tcp_url_of(db),
            self.ca_file().display()
        )
    }

    /// The connection string of database `db` over TCP, without TLS
    /// settings (tests add their own `sslmode` and `sslrootcert`).
    pub fn tcp_url_of(&self, db: &str) -> String {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=latchkey dbname={db}",
            self.port
        )
    }

    /// The connection string of database `db` over the Unix socket (never
    /// TLS: PostgreSQL offers none there).
    pub fn socket_url_of(&self, db: &str) -> String {
        format!(
            "host={} port={} user=latchkey dbname={db}",
            self.dir.path().display(),
            self.port
        )
    }

    /// A new, empty database: its connection string over TLS
    /// ([`Self::url_of`]).
    pub fn fresh_database(&self) -> String {
        let db = self.fresh_database_name();
        self.url_of(&db)
    }

    /// A new, empty database: its name.
    pub fn fresh_database_name(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let db = format!("t{n}");
        let admin_url = self.socket_url_of("postgres");
        // On a thread of its own: the client blocks, and tests call this
        // from async code too.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    postgres::Client::connect(&admin_url, postgres::NoTls)?
                        .batch_execute(&format!("CREATE DATABASE {db}"))
                })
                .join()
        })
        .expect("the thread creating a test database")
        .expect("create a test database");
        db
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.data_dir()) {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

/// The name of the CA's certificate in the data directory.
const CA_FILE: &str = "root.crt";

/// A certificate authority made for one test.
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Self { key, cert })
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `name` signed by this CA, and its key:
    /// both PEM.
    pub fn issue(&self, name: &str) -> Result<(String, String), String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let params =
            rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A free TCP port on 127.0.0.1, also the number in the socket's name.
fn free_port() -> Result<u16, String> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
}
