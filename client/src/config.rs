//! Where a device keeps its identity: a "home" directory (per user by
//! default, `--home DIR` or `LATCHKEY_HOME` to choose) holding a user
//! identity, a host identity, or both, each a TOML file plus a private key
//! file readable only by its owner.

use std::{
    fmt, fs,
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use latchkey_protocol::{
    e2e::ExportKey,
    handshake::Keypair,
    ids::{HostName, PublicKey, RecordId, RelayPin, SecretKey, UserName},
    rights::Rights,
    session::DesktopProtocol,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors reading or writing the home directory.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The device has not enrolled as this role yet.
    #[error("this device is not enrolled as a {role} yet (no {path}): run `{hint}`")]
    NotEnrolled {
        /// "user" or "host".
        role: &'static str,
        /// The missing file.
        path: PathBuf,
        /// The command to run.
        hint: &'static str,
    },
}

/// A device's home directory.
#[derive(Clone, Debug)]
pub struct Home {
    /// The directory.
    pub path: PathBuf,
}

/// What a user's device knows about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The relay, `host:port`.
    pub relay: String,
    /// The other relays of its cluster (same pin), as the invite listed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_relays: Vec<String>,
    /// The relay's pin (text form).
    pub pin: String,
    /// The user's account name.
    pub user: UserName,
    /// The programs `latchkey desktop` opens a host's desktop with, by
    /// protocol (a `[viewer]` table). Default: none, so the system's
    /// opener (`xdg-open`, `open`, `mstsc`).
    #[serde(default, skip_serializing_if = "Viewers::is_empty")]
    pub viewer: Viewers,
}

/// A user's own desktop viewers in `user.toml`, one per protocol:
///
/// ```toml
/// [viewer]
/// vnc = ["vncviewer", "127.0.0.1::{port}"]
/// rdp = ["xfreerdp", "/v:{addr}"]
/// ```
///
/// In each word `{addr}` stands for the forwarded desktop's local
/// `127.0.0.1:PORT`, `{port}` for its port and `{url}` for
/// `vnc://127.0.0.1:PORT`: viewers disagree on how they take an address
/// (TigerVNC's `vncviewer` reads `HOST:N` as a display number).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Viewers {
    /// The VNC viewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<ViewerCommand>,
    /// The RDP viewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdp: Option<ViewerCommand>,
}

impl Viewers {
    /// Whether the user named no viewer at all.
    pub fn is_empty(&self) -> bool {
        self.vnc.is_none() && self.rdp.is_none()
    }

    /// The user's viewer for `protocol`, if they named one.
    pub fn get(&self, protocol: DesktopProtocol) -> Option<&ViewerCommand> {
        match protocol {
            DesktopProtocol::Vnc => self.vnc.as_ref(),
            DesktopProtocol::Rdp => self.rdp.as_ref(),
            _ => None,
        }
    }
}

/// A viewer's program and its arguments; never empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct ViewerCommand(Vec<String>);

impl ViewerCommand {
    /// The program, then its arguments (with their placeholders).
    pub fn words(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for ViewerCommand {
    type Error = &'static str;

    fn try_from(words: Vec<String>) -> Result<Self, Self::Error> {
        match words.first() {
            Some(program) if !program.is_empty() => Ok(Self(words)),
            _ => Err("a viewer is a program and its arguments, e.g. [\"vncviewer\", \"127.0.0.1::{port}\"]"),
        }
    }
}

impl From<ViewerCommand> for Vec<String> {
    fn from(command: ViewerCommand) -> Self {
        command.0
    }
}

/// A host agent's configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The relay, `host:port`.
    pub relay: String,
    /// The other relays of its cluster (same pin), as the invite listed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_relays: Vec<String>,
    /// The relay's pin (text form).
    pub pin: String,
    /// The host's name.
    pub host: HostName,
    /// Allow interactive shells (`latchkey connect`). Default true.
    #[serde(default = "yes")]
    pub allow_shell: bool,
    /// Allow running commands (`latchkey exec`). Default true.
    #[serde(default = "yes")]
    pub allow_exec: bool,
    /// Allow file copies (`latchkey cp`). Default true.
    #[serde(default = "yes")]
    pub allow_copy: bool,
    /// TCP targets `latchkey forward` may reach, as `IP:PORT`. Default:
    /// SSH, VNC and RDP on this machine.
    #[serde(default = "default_forward_allow")]
    pub forward_allow: Vec<String>,
    /// The command an in-session reboot runs. Default: `systemctl reboot`
    /// on Linux, `sudo shutdown -r now` on macOS, `shutdown /r /t 0` on
    /// Windows. The agent exits after running it; the service manager
    /// starts it again when the machine is back.
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
    /// The account shells, commands and copies run as when the agent runs
    /// as root (required then, so sessions cannot read the host's keys;
    /// `"root"` allows it anyway). Unset: the agent's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_user: Option<String>,
    /// The most a shared user may do here, whatever their grant allows:
    /// a comma-separated list of shell, exec, copy-from, copy-to, forward,
    /// reboot (the owner's say on their own machine; the owner's own
    /// access is never narrowed). Default: all, that is, what the grant
    /// allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_rights: Option<SharedRights>,
    /// The remote desktop `latchkey desktop` opens, `vnc://IP:PORT` or
    /// `rdp://IP:PORT` as seen from this host; `forward_allow` must permit
    /// it, since clients reach it through ordinary forwards. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<DesktopUrl>,
    /// Whose sessions the agent records in its home's `recordings`:
    /// `"shared"` (shared users', the default), `"all"` or `"off"`.
    #[serde(default)]
    pub record: RecordPolicy,
    /// How many days a recording is kept. Default 30.
    #[serde(default = "default_record_keep_days")]
    pub record_keep_days: u32,
    /// How many MiB all recordings may take; the oldest go first. Default
    /// 1024.
    #[serde(default = "default_record_keep_mib")]
    pub record_keep_mib: u64,
    /// Whether a recorded shell keeps what its user typed too (passwords
    /// typed at prompts that do not echo included). Default false: a
    /// shell keeps what it showed, a command its standard input.
    #[serde(default)]
    pub record_keystrokes: bool,
}

/// Whose sessions a host records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordPolicy {
    /// Shared users' sessions: the owner sees what was done on their PC;
    /// their own work stays unrecorded.
    #[default]
    Shared,
    /// Everyone's, the owner's too.
    All,
    /// Nobody's.
    Off,
}

impl RecordPolicy {
    /// Whether a session of this user is recorded (`shared`: a user the
    /// host is shared with, not its owner).
    pub fn records(self, shared: bool) -> bool {
        match self {
            Self::Shared => shared,
            Self::All => true,
            Self::Off => false,
        }
    }
}

/// A host's `shared_rights`, read when `host.toml` is, so an agent never
/// starts with a list it cannot apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SharedRights(pub Rights);

impl TryFrom<String> for SharedRights {
    type Error = latchkey_protocol::rights::RightsError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse().map(Self)
    }
}

impl From<SharedRights> for String {
    fn from(r: SharedRights) -> String {
        r.0.to_string()
    }
}

/// A host's `desktop`: `vnc://IP:PORT` or `rdp://IP:PORT`, parsed when
/// `host.toml` is read, so an agent never starts declaring a desktop it
/// could not reach. An IP, not a name: the host connects to it as
/// `forward_allow` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DesktopUrl {
    /// What it speaks.
    pub protocol: DesktopProtocol,
    /// Where it listens, as seen from the host.
    pub target: SocketAddr,
}

/// Why a `desktop` is not `vnc://IP:PORT` or `rdp://IP:PORT`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DesktopUrlError {
    /// Not a URL at all.
    #[error("desktop '{0}' is not a URL ({1}): give vnc://IP:PORT or rdp://IP:PORT")]
    NotUrl(String, url::ParseError),
    /// A scheme other than `vnc` and `rdp`.
    #[error("desktop '{0}': the scheme must be vnc or rdp")]
    Scheme(String),
    /// A host name, or no host.
    #[error("desktop '{0}': give an IP address, such as 127.0.0.1, not a name")]
    NotIp(String),
    /// No port.
    #[error("desktop '{0}': give its port, e.g. vnc://127.0.0.1:5900")]
    NoPort(String),
    /// A user, password, path, query or fragment, which nothing would use.
    #[error("desktop '{0}': give only the scheme, IP and port (no user, path, query or fragment)")]
    Extra(String),
}

impl DesktopUrl {
    /// The desktop `protocol` at `target`.
    pub fn new(protocol: DesktopProtocol, target: SocketAddr) -> Self {
        Self { protocol, target }
    }
}

impl FromStr for DesktopUrl {
    type Err = DesktopUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let given = || text.to_string();
        let parsed = url::Url::parse(text).map_err(|e| DesktopUrlError::NotUrl(given(), e))?;
        let protocol = DesktopProtocol::from_scheme(parsed.scheme())
            .ok_or_else(|| DesktopUrlError::Scheme(given()))?;
        // `vnc` and `rdp` are not schemes the URL standard knows, so an
        // IPv4 address comes back as an opaque host: read it as an IP here.
        let ip: IpAddr = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.into(),
            Some(url::Host::Ipv6(ip)) => ip.into(),
            Some(url::Host::Domain(name)) => {
                name.parse().map_err(|_| DesktopUrlError::NotIp(given()))?
            }
            None => return Err(DesktopUrlError::NotIp(given())),
        };
        let port = parsed
            .port()
            .ok_or_else(|| DesktopUrlError::NoPort(given()))?;
        let extra = !parsed.username().is_empty()
            || parsed.password().is_some()
            || !matches!(parsed.path(), "" | "/")
            || parsed.query().is_some()
            || parsed.fragment().is_some();
        if extra {
            return Err(DesktopUrlError::Extra(given()));
        }
        Ok(Self::new(protocol, SocketAddr::new(ip, port)))
    }
}

impl TryFrom<String> for DesktopUrl {
    type Error = DesktopUrlError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DesktopUrl> for String {
    fn from(url: DesktopUrl) -> Self {
        url.to_string()
    }
}

impl fmt::Display for DesktopUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol.scheme(), self.target)
    }
}

fn default_reboot_command() -> Vec<String> {
    let words: &[&str] = if cfg!(target_os = "windows") {
        &["shutdown", "/r", "/t", "0"]
    } else if cfg!(target_os = "macos") {
        &["sudo", "shutdown", "-r", "now"]
    } else {
        &["systemctl", "reboot"]
    };
    words.iter().map(|w| w.to_string()).collect()
}

fn default_record_keep_days() -> u32 {
    30
}

fn default_record_keep_mib() -> u64 {
    1024
}

fn yes() -> bool {
    true
}

fn default_forward_allow() -> Vec<String> {
    ["127.0.0.1:22", "127.0.0.1:5900", "127.0.0.1:3389"]
        .map(String::from)
        .to_vec()
}

const USER_FILE: &str = "user.toml";
const USER_KEY: &str = "user.key";
/// The host config's file name.
pub const HOST_FILE: &str = "host.toml";
const HOST_KEY: &str = "host.key";
const RESUME_TICKET: &str = "resume.ticket";
/// The host's OPAQUE export keys, one line per code record it registered:
/// `RECORD-ID KEY`. As secret as `host.key`.
const EXPORT_KEYS: &str = "e2e.keys";
/// The host keys a user's client pinned on first use, one line per host:
/// `RELAY-PIN HOST KEY` (like ssh's `known_hosts`).
const KNOWN_HOSTS: &str = "known_hosts";
/// The names `latchkey hosts` last listed, one a line: what shell
/// completion offers for a HOST argument without asking the relay.
const LISTED_HOSTS: &str = "listed_hosts";

impl Home {
    /// `--home`/`LATCHKEY_HOME` if given, else the platform config dir.
    pub fn locate(explicit: Option<PathBuf>) -> Self {
        let path = explicit.unwrap_or_else(|| {
            directories::ProjectDirs::from("", "", "latchkey")
                .map(|d| d.config_dir().to_owned())
                .unwrap_or_else(|| PathBuf::from(".latchkey"))
        });
        Self { path }
    }

    /// Path of the host config file (for messages).
    pub fn host_config_path(&self) -> PathBuf {
        self.path.join(HOST_FILE)
    }

    /// Reads the user identity.
    pub fn user(&self) -> Result<(UserConfig, Keypair), ConfigError> {
        let cfg: UserConfig = self.read_toml(USER_FILE, "user", "latchkey enroll TOKEN")?;
        let key = self.read_key(USER_KEY)?;
        Ok((cfg, key))
    }

    /// Reads the host identity.
    pub fn host(&self) -> Result<(HostConfig, Keypair), ConfigError> {
        let cfg: HostConfig = self.read_toml(HOST_FILE, "host", "latchkey host enroll TOKEN")?;
        cfg.check().map_err(|why| ConfigError::Invalid {
            path: self.host_config_path(),
            why,
        })?;
        let key = self.read_key(HOST_KEY)?;
        Ok((cfg, key))
    }

    /// Saves a new user identity.
    pub fn save_user(&self, cfg: &UserConfig, key: &Keypair) -> Result<(), ConfigError> {
        self.write_private(USER_KEY, key.secret.as_bytes())?;
        self.write_toml(USER_FILE, cfg)
    }

    /// Saves a new host identity.
    pub fn save_host(&self, cfg: &HostConfig, key: &Keypair) -> Result<(), ConfigError> {
        self.write_private(HOST_KEY, key.secret.as_bytes())?;
        self.write_toml(HOST_FILE, cfg)
    }

    /// Keeps a resume ticket across the reboot (written and synced before
    /// the reboot command runs).
    pub fn save_ticket(&self, ticket: &[u8; 32]) -> Result<(), ConfigError> {
        self.write_private(RESUME_TICKET, ticket)
    }

    /// The resume ticket left by a reboot, if any.
    pub fn ticket(&self) -> Option<[u8; 32]> {
        fs::read(self.path.join(RESUME_TICKET))
            .ok()?
            .try_into()
            .ok()
    }

    /// Forgets the resume ticket (it is single-use either way).
    pub fn clear_ticket(&self) {
        let _ = fs::remove_file(self.path.join(RESUME_TICKET));
    }

    /// Files the export key of a code record this host registered, for the
    /// end-to-end handshakes of sessions that log in with it. Records are
    /// immutable and few (one per code set), so the file only grows by a
    /// line per `set-code`.
    ///
    /// `only_for` is the user of a code of their own (`reset-code --user`):
    /// its key then serves that user's sessions only. The owner's codes
    /// serve the owner and every user who inherited them.
    pub fn save_export_key(
        &self,
        record: &RecordId,
        key: &ExportKey,
        only_for: Option<&UserName>,
    ) -> Result<(), ConfigError> {
        let _lock = self.lock(EXPORT_KEYS)?;
        let mut text = self.read_private_text(EXPORT_KEYS)?;
        text.push_str(&format!(
            "{} {}",
            record.to_text(),
            latchkey_protocol::ids::to_text(key.as_bytes())
        ));
        if let Some(user) = only_for {
            text.push_str(&format!(" {user}"));
        }
        text.push('\n');
        self.write_private(EXPORT_KEYS, text.as_bytes())
    }

    /// The export key of `record` for a session of `user`, if this host
    /// registered it (and, for a user's own code, for that user).
    pub fn export_key(
        &self,
        record: &RecordId,
        user: &UserName,
    ) -> Result<Option<ExportKey>, ConfigError> {
        let text = self.read_private_text(EXPORT_KEYS)?;
        let wanted = record.to_text();
        let found = text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != wanted {
                return None;
            }
            let key = words.next()?;
            match words.next() {
                Some(only_for) if only_for != user.as_str() => Some(Ok(None)),
                _ => Some(latchkey_protocol::ids::from_text_vec(key, "export key").map(Some)),
            }
        });
        match found {
            None | Some(Ok(None)) => Ok(None),
            Some(Ok(Some(bytes))) => Ok(Some(ExportKey::from_bytes(bytes))),
            Some(Err(e)) => Err(ConfigError::Invalid {
                path: self.path.join(EXPORT_KEYS),
                why: e.to_string(),
            }),
        }
    }

    /// Holds `NAME.lock` for a read-modify-write of `NAME`, so two commands
    /// at once (two `set-code`s) never lose each other's line.
    fn lock(&self, name: &str) -> Result<fs::File, ConfigError> {
        use fs4::fs_std::FileExt;
        self.ensure_dir()?;
        let path = self.path.join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Self::io(&path))?;
        FileExt::lock_exclusive(&file).map_err(Self::io(&path))?;
        Ok(file)
    }

    /// The host keys pinned on this device: (relay pin, host, key).
    pub fn known_hosts(&self) -> Result<Vec<(String, HostName, PublicKey)>, ConfigError> {
        let path = self.path.join(KNOWN_HOSTS);
        let text = self.read_private_text(KNOWN_HOSTS)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let mut words = line.split_whitespace();
                let parsed = (|| {
                    let relay = words.next()?.to_owned();
                    let host = words.next()?.parse().ok()?;
                    let key = PublicKey::from_text(words.next()?).ok()?;
                    Some((relay, host, key))
                })();
                parsed.ok_or_else(|| ConfigError::Invalid {
                    path: path.clone(),
                    why: format!("not `RELAY-PIN HOST KEY`: {line:?}"),
                })
            })
            .collect()
    }

    /// Pins `key` as `host`'s key on the relay pinned as `relay`.
    pub fn pin_host_key(
        &self,
        relay: &str,
        host: &HostName,
        key: &PublicKey,
    ) -> Result<(), ConfigError> {
        let _lock = self.lock(KNOWN_HOSTS)?;
        let mut text = self.read_private_text(KNOWN_HOSTS)?;
        text.push_str(&format!("{relay} {host} {}\n", key.to_text()));
        self.write_private(KNOWN_HOSTS, text.as_bytes())
    }

    /// Forgets `host`'s pinned key on the relay pinned as `relay` (to accept
    /// a new one); returns whether one was pinned.
    pub fn forget_host_key(&self, relay: &str, host: &HostName) -> Result<bool, ConfigError> {
        let _lock = self.lock(KNOWN_HOSTS)?;
        let text = self.read_private_text(KNOWN_HOSTS)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                let mut words = line.split_whitespace();
                (words.next(), words.next()) != (Some(relay), Some(host.as_str()))
            })
            .collect();
        let forgot = kept.len() != text.lines().count();
        if forgot {
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            self.write_private(KNOWN_HOSTS, out.as_bytes())?;
        }
        Ok(forgot)
    }

    /// Remembers the hosts the relay just listed, for shell completion.
    pub fn save_listed_hosts(&self, hosts: &[HostName]) -> Result<(), ConfigError> {
        let text: String = hosts.iter().map(|h| format!("{h}\n")).collect();
        self.write_private(LISTED_HOSTS, text.as_bytes())
    }

    /// The hosts `latchkey hosts` last listed (none before the first
    /// listing); lines that are not host names are skipped.
    pub fn listed_hosts(&self) -> Result<Vec<HostName>, ConfigError> {
        let text = self.read_private_text(LISTED_HOSTS)?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// A private text file's contents, empty if it does not exist.
    fn read_private_text(&self, name: &str) -> Result<String, ConfigError> {
        let path = self.path.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    /// Whether the user identity exists.
    pub fn has_user(&self) -> bool {
        self.path.join(USER_FILE).exists()
    }

    /// Whether the host identity exists.
    pub fn has_host(&self) -> bool {
        self.path.join(HOST_FILE).exists()
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
        move |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn read_toml<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
        role: &'static str,
        hint: &'static str,
    ) -> Result<T, ConfigError> {
        let path = self.path.join(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotEnrolled { role, path, hint })
            }
            Err(e) => return Err(Self::io(&path)(e)),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path,
            why: e.to_string(),
        })
    }

    fn read_key(&self, name: &str) -> Result<Keypair, ConfigError> {
        let path = self.path.join(name);
        let bytes = fs::read(&path).map_err(Self::io(&path))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| ConfigError::Invalid {
            path: path.clone(),
            why: "not a 32-byte key".into(),
        })?;
        Ok(Keypair::from_secret(SecretKey::from_bytes(bytes)))
    }

    fn ensure_dir(&self) -> Result<(), ConfigError> {
        fs::create_dir_all(&self.path).map_err(Self::io(&self.path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))
                .map_err(Self::io(&self.path))?;
        }
        Ok(())
    }

    /// Writes a file readable by the owner only, atomically: a new file,
    /// synced, renamed over the old one. The result is owner-only even when
    /// the file existed with a wider mode, and a crash never leaves half a key.
    fn write_private(&self, name: &str, bytes: &[u8]) -> Result<(), ConfigError> {
        self.ensure_dir()?;
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(Self::io(&tmp))?;
        file.write_all(bytes).map_err(Self::io(&tmp))?;
        file.sync_all().map_err(Self::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(Self::io(&path))
    }

    fn write_toml<T: Serialize>(&self, name: &str, value: &T) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(value).map_err(|e| ConfigError::Invalid {
            path: self.path.join(name),
            why: e.to_string(),
        })?;
        self.write_private(name, text.as_bytes())
    }
}

/// `relay` then `others`, each once.
fn all_relays(relay: &str, others: &[String]) -> Vec<String> {
    let mut all = vec![relay.to_owned()];
    for r in others {
        if !all.contains(r) {
            all.push(r.clone());
        }
    }
    all
}

impl UserConfig {
    /// Every relay this device may dial, its first relay first.
    pub fn relays(&self) -> Vec<String> {
        all_relays(&self.relay, &self.other_relays)
    }

    /// The parsed pin.
    pub fn pin(&self) -> Result<RelayPin, ConfigError> {
        RelayPin::from_text(&self.pin).map_err(|e| ConfigError::Invalid {
            path: USER_FILE.into(),
            why: e.to_string(),
        })
    }
}

impl HostConfig {
    /// A new host config with the defaults.
    pub fn new(relays: &[String], pin: String, host: HostName) -> Self {
        Self {
            relay: relays.first().cloned().unwrap_or_default(),
            other_relays: relays.iter().skip(1).cloned().collect(),
            pin,
            host,
            allow_shell: true,
            allow_exec: true,
            allow_copy: true,
            forward_allow: default_forward_allow(),
            reboot_command: default_reboot_command(),
            session_user: None,
            shared_rights: None,
            desktop: None,
            record: RecordPolicy::default(),
            record_keep_days: default_record_keep_days(),
            record_keep_mib: default_record_keep_mib(),
            record_keystrokes: false,
        }
    }

    /// The most a shared user may do here (`shared_rights`, else all).
    pub fn shared_at_most(&self) -> Rights {
        self.shared_rights
            .as_ref()
            .map_or_else(Rights::all, |r| r.0.clone())
    }

    /// The targets `forward_allow` permits: its `IP:PORT` entries (others
    /// permit nothing).
    pub fn allowed_targets(&self) -> Vec<SocketAddr> {
        self.forward_allow
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// What the file's syntax cannot say: a `desktop` that `forward_allow`
    /// does not permit could never be reached, so it is refused at load
    /// rather than at a user's first connection.
    fn check(&self) -> Result<(), String> {
        if self.record_keep_days == 0 || self.record_keep_mib == 0 {
            return Err(
                "record_keep_days and record_keep_mib must be at least 1 (record = \"off\" records nothing)"
                    .into(),
            );
        }
        match self.desktop {
            Some(desktop) if !self.allowed_targets().contains(&desktop.target) => Err(format!(
                "desktop {desktop} is not a target forward_allow permits: add \"{}\" to forward_allow",
                desktop.target
            )),
            _ => Ok(()),
        }
    }

    /// Every relay this host may dial, its first relay first.
    pub fn relays(&self) -> Vec<String> {
        all_relays(&self.relay, &self.other_relays)
    }

    /// The parsed pin.
    pub fn pin(&self) -> Result<RelayPin, ConfigError> {
        RelayPin::from_text(&self.pin).map_err(|e| ConfigError::Invalid {
            path: HOST_FILE.into(),
            why: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_secret_written_over_a_wider_file_ends_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let home = Home::locate(Some(dir.path().to_owned()));
        let path = dir.path().join(RESUME_TICKET);
        fs::write(&path, b"old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        home.save_ticket(&[7; 32]).expect("save");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read(&path).expect("read"), [7; 32]);
    }

    #[test]
    fn a_users_own_code_key_serves_that_user_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home {
            path: dir.path().join("home"),
        };
        let (owner, own) = (RecordId([1; 16]), RecordId([2; 16]));
        let bob: UserName = "bob".parse().expect("name");
        let alice: UserName = "alice".parse().expect("name");
        let key = ExportKey::from_bytes(vec![7; 64]);
        home.save_export_key(&owner, &key, None).expect("save");
        home.save_export_key(&own, &key, Some(&bob)).expect("save");
        assert!(home.export_key(&owner, &alice).expect("read").is_some());
        assert!(home.export_key(&owner, &bob).expect("read").is_some());
        assert!(home.export_key(&own, &bob).expect("read").is_some());
        assert!(home.export_key(&own, &alice).expect("read").is_none());
        assert!(home
            .export_key(&RecordId([3; 16]), &bob)
            .expect("read")
            .is_none());
    }

    #[test]
    fn a_desktop_is_a_vnc_or_rdp_url_with_an_ip_and_a_port() {
        let vnc: DesktopUrl = "vnc://127.0.0.1:5900".parse().expect("vnc");
        assert_eq!(
            vnc,
            DesktopUrl::new(
                DesktopProtocol::Vnc,
                "127.0.0.1:5900".parse().expect("addr")
            )
        );
        assert_eq!(vnc.to_string(), "vnc://127.0.0.1:5900");
        let rdp: DesktopUrl = "RDP://[::1]:3389/".parse().expect("rdp");
        assert_eq!(rdp.to_string(), "rdp://[::1]:3389");
        use DesktopUrlError as E;
        let refused = |text: &str| text.parse::<DesktopUrl>().expect_err(text);
        assert!(matches!(refused("127.0.0.1:5900"), E::NotUrl(..)));
        assert!(matches!(refused("http://127.0.0.1:80"), E::Scheme(_)));
        assert!(matches!(refused("vnc://localhost:5900"), E::NotIp(_)));
        assert!(matches!(refused("vnc:5900"), E::NotIp(_)));
        assert!(matches!(refused("vnc://127.0.0.1"), E::NoPort(_)));
        assert!(matches!(refused("vnc://me@127.0.0.1:5900"), E::Extra(_)));
        assert!(matches!(refused("vnc://127.0.0.1:5900/x?y"), E::Extra(_)));
        assert!(matches!(
            refused("vnc://127.0.0.1:99999"),
            E::NotUrl(_, url::ParseError::InvalidPort)
        ));
    }

    #[test]
    fn a_desktop_that_forward_allow_does_not_permit_is_a_config_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::locate(Some(dir.path().to_owned()));
        let key = Keypair::from_secret(SecretKey::from_bytes([5; 32]));
        let mut cfg = HostConfig::new(
            &["relay:4433".into()],
            String::new(),
            "mypc".parse().expect("name"),
        );
        cfg.desktop = Some("vnc://127.0.0.1:5901".parse().expect("desktop"));
        home.save_host(&cfg, &key).expect("save");
        let Err(err) = home.host() else {
            panic!("a desktop outside forward_allow was accepted");
        };
        assert!(
            err.to_string().ends_with(
                "host.toml: desktop vnc://127.0.0.1:5901 is not a target forward_allow \
                 permits: add \"127.0.0.1:5901\" to forward_allow"
            ),
            "{err}"
        );
        cfg.desktop = Some("vnc://127.0.0.1:5900".parse().expect("desktop"));
        home.save_host(&cfg, &key).expect("save");
        assert_eq!(home.host().expect("valid").0.desktop, cfg.desktop);
    }

    #[test]
    fn a_viewer_is_a_program_and_its_arguments() {
        let cfg: UserConfig = toml::from_str(
            "relay = \"r:1\"\npin = \"p\"\nuser = \"alice\"\n\
             [viewer]\nvnc = [\"vncviewer\", \"127.0.0.1::{port}\"]\n",
        )
        .expect("user.toml");
        let vnc = cfg.viewer.get(DesktopProtocol::Vnc).expect("vnc viewer");
        assert_eq!(vnc.words(), ["vncviewer", "127.0.0.1::{port}"]);
        assert!(cfg.viewer.get(DesktopProtocol::Rdp).is_none());
        let empty = toml::from_str::<UserConfig>(
            "relay = \"r:1\"\npin = \"p\"\nuser = \"alice\"\n[viewer]\nrdp = []\n",
        );
        assert!(empty.is_err());
    }

    #[test]
    fn the_listed_hosts_are_replaced_by_the_next_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home {
            path: dir.path().join("home"),
        };
        assert!(home.listed_hosts().expect("read").is_empty());
        let names =
            |v: &[&str]| -> Vec<HostName> { v.iter().map(|n| n.parse().expect("name")).collect() };
        home.save_listed_hosts(&names(&["mypc", "lab"]))
            .expect("save");
        assert_eq!(home.listed_hosts().expect("read"), names(&["mypc", "lab"]));
        home.save_listed_hosts(&names(&["other"])).expect("save");
        assert_eq!(home.listed_hosts().expect("read"), names(&["other"]));
    }
}
