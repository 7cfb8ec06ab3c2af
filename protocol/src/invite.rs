//! Invite tokens: what an admin hands to a new device so that enrolling is
//! one command. A token carries where the relay is, what to pin, and the
//! one-time secret; the relay keeps only the secret's digest.

use serde::{Deserialize, Serialize};

use crate::{
    codec::{decode_body, encode_body},
    error::ParseError,
    ids::{from_text_vec, to_text, RelayPin, TokenSecret},
};

/// Prefix that marks a Latchkey token (and its format version).
const PREFIX: &str = "lk1-";

/// A one-time invite for a user or a host device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The addresses (`host:port`) of the relays devices may dial: the
    /// relays of one cluster, which share the pin. Never empty.
    pub relays: Vec<String>,
    /// What the device pins about the relay.
    pub pin: RelayPin,
    /// The one-time secret.
    pub secret: TokenSecret,
    /// Whether the token enrolls a host (else a user's device), so the
    /// client can refuse the wrong command before the token is spent.
    pub for_host: bool,
}

/// The most relay addresses a token may carry.
pub const MAX_RELAYS: usize = 16;

impl Invite {
    /// The token as one copy-pastable word.
    pub fn to_text(&self) -> String {
        // An Invite always encodes (a short string and fixed-size arrays).
        let body = encode_body(self).unwrap_or_default();
        format!("{PREFIX}{}", to_text(&body))
    }

    /// Parses [`Invite::to_text`] output.
    pub fn from_text(s: &str) -> Result<Self, ParseError> {
        let bad = |why| ParseError::Encoding {
            what: "invite token",
            why,
        };
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(bad("not a latchkey token (lk1-...)"))?;
        let body = from_text_vec(rest, "invite token")?;
        let invite: Self = decode_body(&body).map_err(|_| bad("damaged token"))?;
        if invite.relays.is_empty() || invite.relays.len() > MAX_RELAYS {
            return Err(bad("damaged token (no relay, or too many)"));
        }
        Ok(invite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PublicKey;

    #[test]
    fn tokens_round_trip_and_reject_damage() {
        let invite = Invite {
            relays: vec!["127.0.0.1:4433".into(), "[::1]:4434".into()],
            pin: RelayPin {
                noise_key: PublicKey([1; 32]),
                cert_sha256: [2; 32],
            },
            secret: TokenSecret([3; 32]),
            for_host: true,
        };
        let text = invite.to_text();
        assert!(text.starts_with("lk1-"));
        assert_eq!(Invite::from_text(&text).unwrap(), invite);
        assert!(Invite::from_text(&text[..text.len() - 3]).is_err());
        assert!(Invite::from_text("hello").is_err());
    }
}
