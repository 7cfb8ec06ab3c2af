//! What a login costs: the relay's cryptography in process (against a bare
//! Noise IK handshake), the client's key stretching, and full logins per
//! second against the relay binary.

use std::time::Instant;

use anyhow::{Context, Result};
use latchkey_protocol::{
    frame::Intent,
    handshake::{
        registration_response, validate_upload, CodeRecord, CodeRegistration, Initiator,
        InitiatorReply, Keypair, LoginAuthority, LoginReply, Msg1, RelayIdentity, Reservation,
        Responder,
    },
    ids::{AccessCode, HostName, PublicKey, RecordId, UserName},
    ksf::KsfProfile,
};
use latchkey_tests::{unlimited, World, OWNER_CODE};
use rand::rngs::OsRng;

use crate::measure::{cpu_secs, median, report};

struct OneRecord(PublicKey, CodeRecord);

impl LoginAuthority for OneRecord {
    type Attempt = ();
    fn device_key(&mut self, _: &UserName) -> Option<PublicKey> {
        Some(self.0)
    }
    fn code_record(&mut self, _: &UserName, _: &HostName) -> Option<CodeRecord> {
        Some(self.1.clone())
    }
    fn reserve_attempt(&mut self, _: &UserName, _: &HostName, _: &CodeRecord) -> Reservation<()> {
        Reservation::Reserved(())
    }
}

/// The relay's cryptographic work per login, in process, and the client's
/// key stretching with the production profile.
pub(crate) fn handshake() -> Result<()> {
    let relay = RelayIdentity::generate(&mut OsRng);
    let device = Keypair::generate(&mut OsRng);
    let code = AccessCode::new(OWNER_CODE.into())?;
    let ksf = KsfProfile::InsecureFastForTests;
    let (reg, req) = CodeRegistration::start(&mut OsRng, &code, ksf)?;
    let id = RecordId([1; 16]);
    let (upload, _) = reg.finish(&mut OsRng, &code, &registration_response(&relay, &req, id)?)?;
    let record = CodeRecord {
        id,
        ksf,
        record: validate_upload(&upload)?,
    };
    let mut authority = OneRecord(device.public, record);
    let (mut relay_us, mut baseline_us) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let (init, msg1) = Initiator::start_login(
            &mut OsRng,
            &device,
            &relay.public_key(),
            b"b",
            "u".parse()?,
            "h".parse()?,
            &code,
        )?;
        let t = Instant::now();
        let Msg1::Login(req) = Responder::read_msg1(&relay, b"b", &msg1, &mut OsRng)? else {
            anyhow::bail!("not a login")
        };
        let LoginReply { msg2, awaiting, .. } = req.respond(&relay, &mut authority, &mut OsRng)?;
        let mut spent = t.elapsed();
        let InitiatorReply::SendKe3 { msg3, .. } =
            init.read_msg2(&mut OsRng, &msg2, Some(&code))?
        else {
            anyhow::bail!("rejected")
        };
        let t = Instant::now();
        let result = awaiting
            .context("no KE3 state")?
            .read_msg3(&msg3)
            .map_err(|(e, _)| e)?;
        spent += t.elapsed();
        anyhow::ensure!(result.verified);
        relay_us.push(spent.as_secs_f64() * 1e6);
        // Baseline: a bare Noise IK handshake (no OPAQUE), same keys.
        let (_, m1) = Initiator::start(
            &mut OsRng,
            &device,
            &relay.public_key(),
            b"b",
            Intent::User { user: "u".parse()? },
        )?;
        let t = Instant::now();
        let Msg1::Device(d) = Responder::read_msg1(&relay, b"b", &m1, &mut OsRng)? else {
            anyhow::bail!("not a device")
        };
        let _ = d.reply(&latchkey_protocol::frame::HelloReply::Welcome)?;
        baseline_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut argon_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut out = [0u8; 64];
        KsfProfile::DEFAULT
            .argon2()
            .hash_password_into(OWNER_CODE.as_bytes(), b"latchkey-bench-salt", &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        argon_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (relay_med, base_med) = (median(relay_us), median(baseline_us));
    println!("handshake: relay work per login {relay_med:.0} us (the relay's side of a Noise IK handshake alone {base_med:.0} us, ratio {:.2}); client Argon2id m=64MiB t=3 {:.0} ms", relay_med / base_med, median(argon_ms.clone()));
    report(
        "handshake",
        serde_json::json!({
            "relay_us_per_login_median": relay_med, "noise_ik_only_us_median": base_med,
            "ratio": relay_med / base_med, "client_argon2_ms_median": median(argon_ms), "samples": 500,
        }),
    );
    Ok(())
}

/// Full logins (QUIC + TLS + Noise IK + OPAQUE + store write) per second
/// against the relay binary, with the client's key stretching at the
/// insecure test profile; and the relay's CPU per login.
pub(crate) async fn logins() -> Result<()> {
    let w = World::with_env(unlimited())?;
    // Many logins in flight at once would otherwise be refused as "busy"
    // by the lockout budget (SPEC S7).
    w.without_lockout()?;
    // One user's logins on one host wait their turn (one attempt decided
    // at a time, SPEC S7), so logins by one user measure a round trip,
    // not the relay: each of the concurrent loops is another granted user.
    let (total, concurrency) = (2000, 16);
    let users = (0..concurrency)
        .map(|i| w.granted_user(&format!("user{i}")))
        .collect::<Result<Vec<_>>>()?;
    let pid = w.relay.proc.as_ref().context("relay")?.pid();
    let cpu0 = cpu_secs(pid);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for user in &users {
        let login = user.login_factory();
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / concurrency {
                let s = login().await?;
                s.control.relay.conn.close(0u32.into(), b"");
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let done = (total / concurrency) * concurrency;
    let cpu = cpu_secs(pid) - cpu0;
    let per_core = done as f64 / cpu;
    println!("logins: {:.0} per second end to end ({done} logins, {concurrency} users at a time, clients on the same cores); relay CPU {:.2} ms per login, i.e. {per_core:.0} logins/s per relay core", done as f64 / secs, cpu * 1e3 / done as f64);
    report(
        "logins",
        serde_json::json!({"logins_per_sec": done as f64 / secs, "relay_cpu_ms_per_login": cpu * 1e3 / done as f64, "logins_per_sec_per_relay_core": per_core, "logins": done}),
    );
    Ok(())
}
