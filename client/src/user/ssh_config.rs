//! `latchkey ssh-config [--write]`: an OpenSSH config block per host the
//! user may reach (`Host NAME.latchkey`, reached with `latchkey proxy` as
//! its ProxyCommand, to the host's own SSH server on the port ssh is
//! given: 22 unless `-p` says otherwise), printed, or installed in a file of its own under
//! `~/.ssh/config.d/` with one `Include` line added to `~/.ssh/config`, so
//! that ssh, scp, sftp, rsync and git reach hosts by name.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use latchkey_protocol::ids::HostName;

/// The suffix of every host's ssh name: `mypc` is `mypc.latchkey` to ssh,
/// so a real machine called `mypc` keeps its own entry.
pub const SUFFIX: &str = ".latchkey";

/// The file `--write` installs, relative to `~/.ssh`.
const FILE: &str = "config.d/latchkey";

/// The line that brings the file into the user's ssh config.
const INCLUDE: &str = "Include config.d/latchkey";

/// `word` quoted for the shell ssh runs a ProxyCommand with.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The config text: one block per host, each reached through `latchkey`
/// at `exe` (with `home` when this device's home is not the default one).
pub fn render(hosts: &[HostName], exe: &Path, home: Option<&Path>) -> String {
    let mut command = shell_word(&exe.to_string_lossy());
    if let Some(home) = home {
        command.push_str(" --home ");
        command.push_str(&shell_word(&home.to_string_lossy()));
    }
    let mut out = String::from(
        "# Written by `latchkey ssh-config`: your Latchkey hosts, reached through\n\
         # `latchkey proxy` (it asks for the access code on the terminal, or takes\n\
         # LATCHKEY_ACCESS_CODE). Run it again when your hosts change.\n",
    );
    for host in hosts {
        out.push_str(&format!(
            "\nHost {host}{SUFFIX}\n    ProxyCommand {command} proxy {host} 127.0.0.1:%p\n    HostKeyAlias {host}{SUFFIX}\n"
        ));
    }
    out
}

/// What `--write` did.
#[derive(Debug)]
pub struct Written {
    /// The file with the hosts' blocks.
    pub file: PathBuf,
    /// The user's ssh config, if the `Include` line was added to it now.
    pub included_in: Option<PathBuf>,
}

/// Installs `text` as `~/.ssh/config.d/latchkey` (0600, its directory 0700)
/// and adds the `Include` line at the top of `~/.ssh/config` once (ssh reads
/// an `Include` after a `Host` line as part of that host's block).
pub fn write(ssh_dir: &Path, text: &str) -> std::io::Result<Written> {
    let file = ssh_dir.join(FILE);
    let dir = file.parent().unwrap_or(ssh_dir);
    create_private_dir(ssh_dir)?;
    create_private_dir(dir)?;
    write_private(&file, text.as_bytes())?;
    let config = ssh_dir.join("config");
    let existing = match std::fs::read_to_string(&config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let included = existing
        .lines()
        .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["Include", FILE]);
    if included {
        return Ok(Written {
            file,
            included_in: None,
        });
    }
    write_private(&config, format!("{INCLUDE}\n{existing}").as_bytes())?;
    Ok(Written {
        file,
        included_in: Some(config),
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Replaces `path` with `bytes` (owner-only on Unix), through a temporary
/// file renamed over it, so a reader never sees half a config.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("latchkey-tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_per_host_with_its_proxy_command_quoted_for_the_shell() {
        let hosts: Vec<HostName> = vec!["mypc".parse().unwrap(), "lab-2".parse().unwrap()];
        let text = render(
            &hosts,
            Path::new("/usr/local/bin/latchkey"),
            Some(Path::new("/home/al ice/.lk")),
        );
        assert!(text.contains(
            "\nHost mypc.latchkey\n    ProxyCommand /usr/local/bin/latchkey --home '/home/al ice/.lk' proxy mypc 127.0.0.1:%p\n    HostKeyAlias mypc.latchkey\n"
        ), "{text}");
        assert!(text.contains("\nHost lab-2.latchkey\n"), "{text}");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn writing_twice_adds_the_include_line_once_and_keeps_the_users_config() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::write(ssh.join("config"), "Host work\n    User me\n").unwrap();
        let first = write(&ssh, "one").unwrap();
        assert_eq!(
            first.included_in.as_deref(),
            Some(ssh.join("config").as_path())
        );
        let second = write(&ssh, "two").unwrap();
        assert!(second.included_in.is_none());
        let config = std::fs::read_to_string(ssh.join("config")).unwrap();
        assert_eq!(
            config,
            "Include config.d/latchkey\nHost work\n    User me\n"
        );
        assert_eq!(std::fs::read_to_string(&second.file).unwrap(), "two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&second.file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
