//! A private PostgreSQL server for tests, from the machine's own packages
//! (Debian's `postgresql`): `initdb` into a temporary directory, listening
//! only on a Unix socket there, without fsync. It takes about a second and a
//! half, and is stopped when the value is dropped.
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
    port: u16,
    next_db: AtomicU32,
}

/// Starts a server, or says why not: `None` outside CI, a panic in CI.
pub fn start_or_skip(test: &str) -> Option<TestPostgres> {
    match TestPostgres::start() {
        Ok(pg) => Some(pg),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: PostgreSQL is needed in CI and could not start: {why}")
        }
        Err(why) => {
            eprintln!("skipping {test}: cannot start PostgreSQL here: {why}");
            None
        }
    }
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
        let options = format!(
            "-F -p {port} -k {} -c listen_addresses='' -c max_connections=200",
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

    /// The connection string of database `db`.
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "host={} port={} user=latchkey dbname={db}",
            self.dir.path().display(),
            self.port
        )
    }

    /// A new, empty database: its connection string.
    pub fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let db = format!("t{n}");
        let admin_url = self.url_of("postgres");
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
        self.url_of(&db)
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

/// A port number for the socket's name (nothing listens on TCP).
fn free_port() -> Result<u16, String> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
}
