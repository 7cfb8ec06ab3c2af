//! ssh through Latchkey: `latchkey proxy` as OpenSSH's ProxyCommand, with
//! Debian's OpenSSH server at the host and its ssh, scp, sftp (and rsync)
//! here, and the blocks `latchkey ssh-config` writes.

use std::process::Command;

use anyhow::Result;
use latchkey_tests::{bin, count, sshd, World, OWNER_CODE};

use crate::{path_str, text};

/// An OpenSSH client command (`ssh`, `scp`, `sftp`) for `server`, reaching
/// it through `latchkey proxy` as alice with the owner's code, on the
/// session the first one keeps (its socket in alice's home).
fn openssh(program: &str, w: &World, server: &sshd::TestSshd) -> Result<Command> {
    let proxy = format!(
        "{} --home {} proxy mypc 127.0.0.1:{}",
        path_str(&bin("latchkey"))?,
        path_str(&w.alice.home)?,
        server.port
    );
    let mut cmd = Command::new(program);
    cmd.env("LATCHKEY_PERSIST", "60s")
        .env("XDG_RUNTIME_DIR", &w.alice.home)
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .args(server.client_options())
        .args(["-o", &format!("ProxyCommand={proxy}")]);
    Ok(cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_scp_rsync_and_sftp_reach_the_host_through_latchkey_proxy() -> Result<()> {
    let Some(server) = sshd::start_or_skip("ssh_scp_and_sftp_reach_the_host") else {
        return Ok(());
    };
    let w = World::new()?;
    w.mypc
        .allow_forward(&[format!("127.0.0.1:{}", server.port)])?;
    let _agent = w.start_agent()?;
    let at = format!("{}@mypc.latchkey", server.user);
    // A command, its output and its exit status.
    let out = openssh("ssh", &w, &server)?
        .args([&at, "echo via-$((40+2)); exit 7"])
        .output()?;
    assert_eq!(text(&out.stdout), "via-42\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(7));
    // A file there and back with scp, 3 MB of it.
    let dir = tempfile::tempdir()?;
    let (sent, back) = (dir.path().join("sent"), dir.path().join("back"));
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&sent, &body)?;
    let remote = dir.path().join("on-the-host");
    let put = openssh("scp", &w, &server)?
        .arg(&sent)
        .arg(format!("{at}:{}", path_str(&remote)?))
        .output()?;
    assert!(put.status.success(), "{}", text(&put.stderr));
    let get = openssh("scp", &w, &server)?
        .arg(format!("{at}:{}", path_str(&remote)?))
        .arg(&back)
        .output()?;
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert!(std::fs::read(&back)? == body, "scp changed the file");
    // rsync over ssh, where rsync is installed (CI installs it).
    if std::path::Path::new("/usr/bin/rsync").exists() {
        let ssh = openssh("ssh", &w, &server)?;
        let mut e = String::from("ssh");
        for arg in ssh.get_args() {
            e.push_str(&format!(" '{}'", arg.to_string_lossy()));
        }
        let synced = dir.path().join("synced");
        let out = Command::new("rsync")
            .envs(ssh.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .args(["-a", "-e", &e])
            .arg(format!("{at}:{}", path_str(&remote)?))
            .arg(&synced)
            .output()?;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(std::fs::read(&synced)? == body, "rsync changed the file");
    } else if std::env::var_os("CI").is_some() {
        anyhow::bail!("rsync is needed in CI (apt-get install rsync)");
    }
    // sftp, in batch mode.
    let batch = dir.path().join("batch");
    std::fs::write(&batch, format!("ls {}\n", path_str(dir.path())?))?;
    let listed = openssh("sftp", &w, &server)?
        .arg("-b")
        .arg(&batch)
        .arg(&at)
        .output()?;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stdout).contains("on-the-host"),
        "{}",
        text(&listed.stdout)
    );
    // All of them on one kept session: one login.
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "login-ok"), 1, "{events:?}");
    w.alice.run(&["disconnect", "mypc"])?;
    Ok(())
}

/// What Latchkey's own failures look like to ssh: exit status 255 and the
/// reason on standard error (a wrong code, a target the host does not
/// allow), as ssh's own are.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_proxy_exits_255_with_the_reason() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out = w
        .alice
        .cmd()
        .env("LATCHKEY_ACCESS_CODE", "not-the-code")
        .args(["proxy", "mypc"])
        .output()?;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("wrong access code"),
        "{}",
        text(&out.stderr)
    );
    let out = w
        .alice
        .cmd()
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .args(["proxy", "mypc", "127.0.0.1:1"])
        .output()?;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("host 'mypc'"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// `ssh-config --write` from a fresh home: one block per host in its own
/// file, included from ~/.ssh/config once, and ssh reaches the host with
/// that block alone (`ssh -p PORT mypc.latchkey`).
#[tokio::test(flavor = "multi_thread")]
async fn ssh_config_writes_blocks_that_ssh_uses() -> Result<()> {
    let Some(server) = sshd::start_or_skip("ssh_config_writes_blocks_that_ssh_uses") else {
        return Ok(());
    };
    let w = World::new()?;
    w.mypc
        .allow_forward(&[format!("127.0.0.1:{}", server.port)])?;
    let _agent = w.start_agent()?;
    let home = tempfile::tempdir()?;
    for _ in 0..2 {
        let out = w
            .alice
            .cmd()
            .env("HOME", home.path())
            .args(["ssh-config", "--write"])
            .output()?;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let ssh_dir = home.path().join(".ssh");
    let config = std::fs::read_to_string(ssh_dir.join("config"))?;
    assert_eq!(
        config.matches("Include config.d/latchkey").count(),
        1,
        "{config}"
    );
    let block = ssh_dir.join("config.d/latchkey");
    assert!(std::fs::read_to_string(&block)?.contains("Host mypc.latchkey"));
    let out = Command::new("ssh")
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .arg("-F")
        .arg(&block)
        .args(server.client_options())
        .args(["-p", &server.port.to_string()])
        .arg(format!("{}@mypc.latchkey", server.user))
        .arg("echo through-the-config")
        .output()?;
    assert_eq!(
        text(&out.stdout),
        "through-the-config\n",
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
