//! X25519 for snow from aws-lc-rs: about twice as fast per Diffie-Hellman
//! as the default resolver's curve25519-dalek on this project's machines,
//! and the relay does three per login. No unsafe code; keys are
//! wiped when dropped.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::types::{Dh, Random};
use zeroize::Zeroizing;

/// One X25519 keypair, as snow's handshakes hold them.
#[derive(Default)]
pub(crate) struct AwsLcX25519 {
    private: Option<PrivateKey>,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl Dh for AwsLcX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        self.private = None;
        self.public = [0; 32];
        let Some(bytes) = privkey.first_chunk::<32>() else {
            return;
        };
        self.secret.copy_from_slice(bytes);
        // A 32-byte X25519 key is always accepted (it is clamped), so the
        // failures below cannot happen; if they did, `dh` would fail.
        let Ok(private) = PrivateKey::from_private_key(&X25519, bytes) else {
            return;
        };
        if let Ok(public) = private.compute_public_key() {
            if let Some(public) = public.as_ref().first_chunk::<32>() {
                self.public = *public;
            }
        }
        self.private = Some(private);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(secret.as_mut_slice())?;
        self.set(secret.as_slice());
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_slice()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let private = self.private.as_ref().ok_or(snow::Error::Dh)?;
        // snow hands the peer's key in a longer buffer.
        let peer = pubkey.get(..32).ok_or(snow::Error::Dh)?;
        let out = out.get_mut(..32).ok_or(snow::Error::Dh)?;
        agreement::agree(
            private,
            UnparsedPublicKey::new(&X25519, peer),
            snow::Error::Dh,
            |shared| {
                out.copy_from_slice(shared);
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snow::{params::DHChoice, resolvers::CryptoResolver, resolvers::DefaultResolver};

    fn dalek() -> Box<dyn Dh> {
        DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("curve25519")
    }

    #[test]
    fn agrees_with_the_default_resolver_on_keys_and_shared_secrets() {
        for seed in 1u8..=20 {
            let (a, b) = ([seed; 32], [seed.wrapping_mul(7); 32]);
            let (mut ours, mut theirs) = (AwsLcX25519::default(), dalek());
            ours.set(&a);
            theirs.set(&a);
            assert_eq!(ours.pubkey(), theirs.pubkey());
            let mut peer = dalek();
            peer.set(&b);
            // The peer's key in a longer buffer, as snow passes it.
            let mut long = [0u8; 56];
            long[..32].copy_from_slice(peer.pubkey());
            let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
            ours.dh(&long, &mut x).expect("dh");
            theirs.dh(peer.pubkey(), &mut y).expect("dh");
            assert_eq!(x, y);
        }
    }

    #[test]
    fn a_low_order_peer_key_is_refused() {
        let mut ours = AwsLcX25519::default();
        ours.set(&[3; 32]);
        let mut out = [0u8; 32];
        assert!(ours.dh(&[0u8; 32], &mut out).is_err());
    }
}
