//! The host's end of end-to-end encryption (SPEC X4, see
//! `latchkey_protocol::e2e`): it answers a session's handshake with the
//! export key of the code record the login used, then opens that session's
//! channels with the keys the handshake made. The relay names the session
//! and the channel number; the keys prove the rest.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use latchkey_protocol::{
    e2e::{respond, Binding, SessionKeys, SessionPsk},
    handshake::Keypair,
    ids::{PublicKey, RecordId, SessionId, UserName},
    record::{Opener, Sealer},
};
use rand::rngs::OsRng;

use super::fair_share::FairShare;
use crate::config::Home;

/// Channel numbers remembered above the floor of one session's keys.
const MAX_REMEMBERED_NUMBERS: usize = 1024;

/// The channel numbers a session's keys have served: each number opens one
/// channel only, so a relay cannot replay a recorded channel (a command,
/// an upload) to run it again. Numbers below the floor are refused too;
/// clients number channels upwards, so only a channel held back behind
/// more than [`MAX_REMEMBERED_NUMBERS`] later ones is ever refused wrongly.
#[derive(Default)]
struct UsedNumbers {
    floor: u64,
    above: BTreeSet<u64>,
}

impl UsedNumbers {
    fn claim(&mut self, number: u64) -> bool {
        if number < self.floor || !self.above.insert(number) {
            return false;
        }
        while self.above.len() > MAX_REMEMBERED_NUMBERS {
            if let Some(lowest) = self.above.pop_first() {
                self.floor = lowest.saturating_add(1);
            }
        }
        true
    }
}

/// One session's keys from its latest handshake.
struct Epoch {
    keys: Arc<SessionKeys>,
    user: UserName,
    user_key: PublicKey,
    used: UsedNumbers,
}

/// The sessions' keys. The relay says when a session ends, and its keys
/// go; beyond a user's fair share, their least recently used session's are
/// forgotten (its client re-handshakes, as after a reboot), never another
/// user's ([`FairShare`]).
type Keys = FairShare<SessionId, Epoch>;

/// What a channel's task gets: its record keys, and who it serves.
pub(crate) struct ChannelKeys {
    pub(crate) sealer: Sealer,
    pub(crate) opener: Opener,
    pub(crate) user: UserName,
    pub(crate) user_key: PublicKey,
}

/// The sessions this agent has keys for.
pub(crate) struct Sessions {
    home: Home,
    key: Keypair,
    inner: Mutex<Keys>,
}

impl Sessions {
    pub(crate) fn new(home: Home, key: Keypair) -> Self {
        Self {
            home,
            key,
            inner: Mutex::new(Keys::new()),
        }
    }

    /// Answers a session's handshake; returns message 2, or why not (the
    /// user sees it).
    pub(crate) fn handshake(
        &self,
        session: SessionId,
        user: UserName,
        user_key: PublicKey,
        record: RecordId,
        msg1: &[u8],
    ) -> Result<Vec<u8>, String> {
        let export = match self.home.export_key(&record, &user) {
            Ok(Some(export)) => export,
            Ok(None) => {
                return Err(
                    "this host has no end-to-end key for the access code you used (it was set \
                     before end-to-end encryption, on another copy of the host, or for another \
                     user): on the host, set it again with `latchkey host set-code` (the owner's \
                     code) or `latchkey host reset-code --user NAME` (a user's own code)"
                        .into(),
                )
            }
            Err(e) => {
                // The detail (paths) stays in the host's log.
                tracing::warn!("cannot read the end-to-end keys: {e}");
                return Err("the host cannot read its end-to-end keys (its log says why)".into());
            }
        };
        let psk = SessionPsk::derive(&export, &record);
        let binding = Binding { session, record };
        let (keys, msg2) = respond(&mut OsRng, &self.key, &user_key, &psk, &binding, msg1)
            .map_err(|_| {
                "the end-to-end handshake failed: the key the relay introduced for you, or the \
                 code key, does not match"
                    .to_string()
            })?;
        let epoch = Epoch {
            keys: Arc::new(keys),
            user: user.clone(),
            user_key,
            used: UsedNumbers::default(),
        };
        let evicted = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session, user, epoch);
        if !evicted.is_empty() {
            tracing::debug!(
                sessions = evicted.len(),
                "end-to-end keys of idle sessions forgotten"
            );
        }
        Ok(msg2)
    }

    /// Forgets an ended session's keys.
    pub(crate) fn forget(&self, session: SessionId) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session);
    }

    /// The keys of channel `number` of `session`, once: a number already
    /// used, or a session without a handshake, is refused.
    pub(crate) fn channel(&self, session: SessionId, number: u64) -> Result<ChannelKeys, String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = inner
            .get_mut(&session)
            .ok_or("no end-to-end handshake for this session")?;
        if !epoch.used.claim(number) {
            return Err(format!("channel number {number} was used already"));
        }
        let (sealer, opener) = epoch.keys.channel(number);
        Ok(ChannelKeys {
            sealer,
            opener,
            user: epoch.user.clone(),
            user_key: epoch.user_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::UsedNumbers;

    #[test]
    fn a_channel_number_serves_once_and_old_numbers_stay_refused() {
        let mut used = UsedNumbers::default();
        assert!(used.claim(1));
        assert!(!used.claim(1));
        assert!(used.claim(3));
        assert!(used.claim(2));
        for n in 4..2000 {
            assert!(used.claim(n));
        }
        // Forgotten numbers are below the floor: still refused.
        assert!(!used.claim(5));
        assert!(!used.claim(1999));
        assert!(used.claim(2001));
    }
}
