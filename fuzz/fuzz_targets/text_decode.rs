//! The text forms people paste: invite tokens, relay pins, keys, names and
//! key-stretching profile names. Whatever parses must print back to the
//! same value, and nothing panics. And any text a peer sends, once shown,
//! holds no control or format character.
#![no_main]

use latchkey_protocol::{
    ids::{HostName, PublicKey, RelayPin, UserName},
    invite::Invite,
    ksf::KsfProfile,
    text,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(invite) = Invite::from_text(text) {
        assert_eq!(Invite::from_text(&invite.to_text()).ok(), Some(invite));
    }
    if let Ok(pin) = RelayPin::from_text(text) {
        assert_eq!(RelayPin::from_text(&pin.to_text()).ok(), Some(pin));
    }
    if let Ok(key) = PublicKey::from_text(text) {
        assert_eq!(PublicKey::from_text(&key.to_text()).ok(), Some(key));
    }
    if let Ok(name) = text.parse::<UserName>() {
        assert_eq!(name.as_str(), text);
    }
    let _ = text.parse::<HostName>();
    if let Some(profile) = KsfProfile::parse(text) {
        assert_eq!(profile.as_str(), text);
    }
    let shown = text::shown(text);
    assert!(!shown.chars().any(text::is_hidden));
    if !text.chars().any(text::is_hidden) {
        assert_eq!(shown, text);
    }
});
