//! Helpers that let fuzz targets reach the code behind Noise encryption:
//! random bytes never decrypt, so targets encrypt fuzzer-chosen payloads
//! with real keys. Built only under `cfg(fuzzing)`.

use rand::{CryptoRng, RngCore};

use crate::{
    handshake::{noise_builder, prologue, read_noise, write_noise, Keypair, RelayIdentity},
    ids::PublicKey,
};

/// Encrypts `payload` as a message 1 from `device` to `relay`.
pub fn msg1_with_payload(
    rng: &mut (impl RngCore + CryptoRng),
    device: &Keypair,
    relay: &PublicKey,
    binding: &[u8],
    payload: &[u8],
) -> Option<Vec<u8>> {
    let prologue = prologue(binding);
    let mut hs = noise_builder(rng)
        .local_private_key(device.secret.as_bytes())
        .ok()?
        .remote_public_key(&relay.0)
        .ok()?
        .prologue(&prologue)
        .ok()?
        .build_initiator()
        .ok()?;
    write_noise(|p, b| hs.write_message(p, b), payload).ok()
}

/// Reads a genuine message 1 as `relay` and answers with `payload` as
/// message 2.
pub fn msg2_with_payload(
    rng: &mut (impl RngCore + CryptoRng),
    relay: &RelayIdentity,
    binding: &[u8],
    msg1: &[u8],
    payload: &[u8],
) -> Option<Vec<u8>> {
    let prologue = prologue(binding);
    let mut hs = noise_builder(rng)
        .local_private_key(relay.keypair.secret.as_bytes())
        .ok()?
        .prologue(&prologue)
        .ok()?
        .build_responder()
        .ok()?;
    read_noise(|m, b| hs.read_message(m, b), msg1).ok()?;
    write_noise(|p, b| hs.write_message(p, b), payload).ok()
}
