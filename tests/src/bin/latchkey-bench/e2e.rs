//! What end-to-end encryption costs: the same streams through the same
//! relay, sealed (records under a session's channel keys, as every
//! Latchkey channel is) and unsealed (the raw bytes a relay splicer moved
//! before end-to-end encryption), interleaved in one run. The host end is
//! this process, on the host's real identity (a bench host answering the
//! handshake as the agent does), so the only difference between the two
//! paths is sealing and opening.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use latchkey_client::{
    config::Home,
    net,
    user::e2e::Handshaker,
    wire::{self, OpenedRecv, SealedSend},
};
use latchkey_protocol::{
    e2e::{respond, Binding, SessionKeys, SessionPsk},
    frame::RelayToHost,
    handshake::Keypair,
    ids::SessionId,
    record::{Opener, Sealer, MAX_RECORD_PAYLOAD},
    session::{ChannelOpen, ChannelRequest, HandshakeReply, HostStream, Relayed},
};
use latchkey_tests::{Device, World, OWNER_CODE};
use quinn::{RecvStream, SendStream};

use crate::measure::{median, percentile, report};

/// Bytes per transfer, each way.
const SIZE: u64 = 512 << 20;
/// Transfers per path and direction.
const RUNS: usize = 3;
/// Round trips per latency sample.
const ROUND_TRIPS: usize = 5_000;
/// Handshakes timed.
const HANDSHAKES: usize = 200;

/// The bench host's sessions: their keys from the latest handshake.
type Keys = Arc<Mutex<HashMap<SessionId, Arc<SessionKeys>>>>;

/// Serves the relay's streams as the host: handshakes, then channels whose
/// first cleartext byte says sealed (`s`) or plain (`p`), and whose next
/// says what to do, as with the direct peer (`peer::stream`): sink (`S`,
/// answer the count), generate (`G` + u64) or echo (`E`).
async fn host(home: Home, control: net::Control, keys: Keys, key: Keypair) {
    let net::Control {
        relay, mut recv, ..
    } = control;
    // The control stream: answer nothing, but keep reading it.
    tokio::spawn(async move {
        while let Ok(Some(_)) = wire::read_frame::<RelayToHost>(&mut recv).await {}
    });
    while let Ok((send, recv)) = relay.conn.accept_bi().await {
        let (home, keys, key) = (home.clone(), keys.clone(), key.clone());
        tokio::spawn(async move {
            let _ = host_stream(&home, &keys, &key, send, recv).await;
        });
    }
}

async fn host_stream(
    home: &Home,
    keys: &Keys,
    key: &Keypair,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<()> {
    let open: ChannelOpen = wire::read_frame(&mut recv).await?.context("no open")?;
    let number = match open.stream {
        HostStream::Handshake {
            user_key,
            record,
            msg1,
        } => {
            let export = home
                .export_key(&record, &open.user)?
                .context("no export key")?;
            let psk = SessionPsk::derive(&export, &record);
            let binding = Binding {
                session: open.session,
                record,
            };
            let (session_keys, msg2) = respond(
                &mut rand::rngs::OsRng,
                key,
                &user_key,
                &psk,
                &binding,
                &msg1,
            )?;
            keys.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(open.session, Arc::new(session_keys));
            wire::write_frame(&mut send, &HandshakeReply::Msg2(msg2)).await?;
            let _ = send.finish();
            return Ok(());
        }
        HostStream::Channel { number } => number,
        _ => bail!("unknown stream"),
    };
    let mut mode = [0u8; 1];
    recv.read_exact(&mut mode).await?;
    if mode[0] == b'p' {
        // The direct-quinn peer's own streams: sink, generate, echo.
        return crate::peer::stream(send, recv).await;
    }
    let session_keys = keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&open.session)
        .cloned()
        .context("no keys")?;
    let (sealer, opener) = session_keys.channel(number);
    sealed_host(SealedSend::new(send, sealer), OpenedRecv::new(recv, opener)).await
}

async fn sealed_host(mut send: SealedSend, mut recv: OpenedRecv) -> Result<()> {
    let mut op = [0u8; 1];
    recv.read_exact(&mut op).await?;
    match op[0] {
        b'S' => {
            let mut got = 0u64;
            while let Some(data) = recv.recv().await? {
                got += data.len() as u64;
            }
            send.write_all(&got.to_be_bytes()).await?;
        }
        b'G' => {
            let mut n = [0u8; 8];
            recv.read_exact(&mut n).await?;
            let chunk = vec![0x5a; MAX_RECORD_PAYLOAD];
            let mut left = u64::from_be_bytes(n);
            while left > 0 {
                let take = left.min(chunk.len() as u64) as usize;
                send.write_all(&chunk[..take]).await?;
                left -= take as u64;
            }
        }
        _ => {
            let mut b = [0u8; 1];
            while recv.read_exact(&mut b).await.is_ok() {
                send.write_all(&b).await?;
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// A client session and its keys.
struct Client {
    session: net::Session,
    handshaker: Handshaker,
    epoch: latchkey_client::user::e2e::Epoch,
}

/// A channel's raw streams and its keys.
type Opened = (SendStream, RecvStream, (Sealer, Opener));

impl Client {
    /// A channel's raw streams, after the relay spliced them.
    async fn open(&self, sealed: bool) -> Result<Opened> {
        let (number, sealer, opener) = self.epoch.next_channel();
        let (mut send, mut recv) = self.session.control.relay.conn.open_bi().await?;
        let request = ChannelRequest::Channel {
            number,
            bulk: false,
        };
        wire::write_frame(&mut send, &request).await?;
        match wire::read_frame::<Relayed>(&mut recv).await? {
            Some(Relayed::Spliced) => {}
            other => bail!("the relay did not splice: {other:?}"),
        }
        send.write_all(if sealed { b"s" } else { b"p" }).await?;
        Ok((send, recv, (sealer, opener)))
    }

    /// MB/s pushing `SIZE` bytes to the host's sink.
    async fn push(&self, sealed: bool) -> Result<f64> {
        let (mut send, mut recv, (sealer, opener)) = self.open(sealed).await?;
        let chunk = vec![0x5a; MAX_RECORD_PAYLOAD];
        let started = Instant::now();
        let got = if sealed {
            let mut send = SealedSend::new(send, sealer);
            let mut recv = OpenedRecv::new(recv, opener);
            send.write_all(b"S").await?;
            let mut left = SIZE;
            while left > 0 {
                let take = left.min(chunk.len() as u64) as usize;
                send.write_all(&chunk[..take]).await?;
                left -= take as u64;
            }
            send.finish().await?;
            let mut got = [0u8; 8];
            recv.read_exact(&mut got).await?;
            u64::from_be_bytes(got)
        } else {
            send.write_all(b"S").await?;
            let bytes = bytes::Bytes::from(chunk);
            let mut left = SIZE;
            while left > 0 {
                let take = left.min(bytes.len() as u64) as usize;
                send.write_chunk(bytes.slice(..take)).await?;
                left -= take as u64;
            }
            send.finish()?;
            let mut got = [0u8; 8];
            recv.read_exact(&mut got).await?;
            u64::from_be_bytes(got)
        };
        anyhow::ensure!(got == SIZE, "the host got {got} of {SIZE} bytes");
        Ok(SIZE as f64 / started.elapsed().as_secs_f64() / 1e6)
    }

    /// MB/s pulling `SIZE` bytes from the host's generator.
    async fn pull(&self, sealed: bool) -> Result<f64> {
        let (mut send, mut recv, (sealer, opener)) = self.open(sealed).await?;
        let started = Instant::now();
        let mut got = 0u64;
        if sealed {
            let mut send = SealedSend::new(send, sealer);
            let mut recv = OpenedRecv::new(recv, opener);
            let mut ask = b"G".to_vec();
            ask.extend_from_slice(&SIZE.to_be_bytes());
            send.write_all(&ask).await?;
            while let Some(data) = recv.recv().await? {
                got += data.len() as u64;
            }
        } else {
            send.write_all(b"G").await?;
            send.write_all(&SIZE.to_be_bytes()).await?;
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
                got += chunk.bytes.len() as u64;
            }
        }
        anyhow::ensure!(got == SIZE, "got {got} of {SIZE} bytes");
        Ok(SIZE as f64 / started.elapsed().as_secs_f64() / 1e6)
    }

    /// One-byte round trips, in µs.
    async fn rtts(&self, sealed: bool) -> Result<Vec<f64>> {
        let (mut send, mut recv, (sealer, opener)) = self.open(sealed).await?;
        let mut out = Vec::with_capacity(ROUND_TRIPS);
        if sealed {
            let mut send = SealedSend::new(send, sealer);
            let mut recv = OpenedRecv::new(recv, opener);
            send.write_all(b"E").await?;
            let mut b = [0u8; 1];
            for _ in 0..ROUND_TRIPS {
                let t = Instant::now();
                send.write_all(b"x").await?;
                recv.read_exact(&mut b).await?;
                out.push(t.elapsed().as_secs_f64() * 1e6);
            }
            send.finish().await?;
        } else {
            send.write_all(b"E").await?;
            let mut b = [0u8; 1];
            for _ in 0..ROUND_TRIPS {
                let t = Instant::now();
                send.write_all(b"x").await?;
                recv.read_exact(&mut b).await?;
                out.push(t.elapsed().as_secs_f64() * 1e6);
            }
            send.finish()?;
        }
        Ok(out)
    }
}

/// The bench host on mypc's identity, dialled in.
async fn bench_host(w: &World) -> Result<()> {
    let home = Home::locate(Some(w.mypc.home.clone()));
    let (cfg, key) = home.host()?;
    let ring = latchkey_client::host::RelayRing::new(cfg.relays(), &cfg.host);
    let control =
        latchkey_client::host::dial(&net::Local::Any, &ring, &cfg.pin()?, &key, &cfg.host).await?;
    tokio::spawn(host(home, control, Keys::default(), key));
    w.wait_online(true)
}

async fn client(device: &Device) -> Result<Client> {
    let mut session = device.login("mypc", OWNER_CODE).await?;
    let handshaker = device.handshaker(&mut session, "mypc").await?;
    let epoch = handshaker.run(&session.control.relay.conn).await?;
    Ok(Client {
        session,
        handshaker,
        epoch,
    })
}

/// Throughput, round trips and handshake time, sealed against unsealed.
pub(crate) async fn e2e() -> Result<()> {
    let w = World::with_env(latchkey_tests::unlimited())?;
    bench_host(&w).await?;
    let c = client(&w.alice).await?;
    let (mut push, mut pull) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..RUNS {
        for (i, sealed) in [false, true].into_iter().enumerate() {
            push[i].push(c.push(sealed).await?);
            pull[i].push(c.pull(sealed).await?);
        }
    }
    let (mut plain_rtt, mut sealed_rtt) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        plain_rtt.extend(c.rtts(false).await?);
        sealed_rtt.extend(c.rtts(true).await?);
    }
    // The handshake alone (after a login, or after the host came back),
    // 20 per session: the relay allows 30 a minute.
    let mut handshake_ms = Vec::new();
    for _ in 0..HANDSHAKES / 20 {
        let s = client(&w.alice).await?;
        for _ in 0..20 {
            // The relay frees the session's handshake place when the last
            // one's stream has ended both ways: a moment after its reply.
            for attempt in 0.. {
                let started = Instant::now();
                match s.handshaker.run(&s.session.control.relay.conn).await {
                    Ok(_) => {
                        handshake_ms.push(started.elapsed().as_secs_f64() * 1e3);
                        break;
                    }
                    Err(e) if attempt < 100 && e.to_string().contains("under way") => {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let mb = |v: &Vec<f64>| median(v.clone());
    let (pp, ps) = (mb(&push[0]), mb(&push[1]));
    let (lp, ls) = (mb(&pull[0]), mb(&pull[1]));
    let (rp50, rs50) = (median(plain_rtt.clone()), median(sealed_rtt.clone()));
    let (rp99, rs99) = (percentile(plain_rtt, 99), percentile(sealed_rtt, 99));
    let hs = median(handshake_ms);
    println!(
        "e2e: client->host {ps:.0} MB/s sealed vs {pp:.0} unsealed ({:.2}x); host->client {ls:.0} vs {lp:.0} ({:.2}x); \
         round trip p50 {rs50:.0} vs {rp50:.0} us (+{:.1}), p99 {rs99:.0} vs {rp99:.0} us; handshake {hs:.2} ms",
        ps / pp,
        ls / lp,
        rs50 - rp50
    );
    report(
        "e2e",
        serde_json::json!({
            "client_to_host_mb_s": { "sealed": ps, "unsealed": pp, "ratio": ps / pp },
            "host_to_client_mb_s": { "sealed": ls, "unsealed": lp, "ratio": ls / lp },
            "rtt_us": { "sealed_p50": rs50, "unsealed_p50": rp50, "added_p50": rs50 - rp50,
                        "sealed_p99": rs99, "unsealed_p99": rp99 },
            "handshake_ms_p50": hs,
            "bytes_per_run": SIZE, "runs": RUNS, "round_trips": ROUND_TRIPS * 2,
        }),
    );
    Ok(())
}
