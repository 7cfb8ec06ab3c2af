//! Key-stretching profiles for access codes. OPAQUE runs Argon2id on the
//! client; registration and login must use the same parameters, so each
//! code record carries its profile and the relay tells the client which one
//! to use in message 2. Profiles are versioned names, never free numbers, so
//! a relay cannot be talked into weak parameters by a host.

use serde::{Deserialize, Serialize};

/// A named set of Argon2id parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KsfProfile {
    /// Production: Argon2id, m = 64 MiB, t = 3, p = 1 (about 0.1-0.2 s on
    /// a current core), the parameters RFC 9106 suggests when memory is
    /// tight.
    Argon2idM64T3,
    /// Tests and benchmarks only: Argon2id with the smallest legal cost. A
    /// relay refuses records with this profile unless its config allows it
    /// (`allow_insecure_ksf`).
    InsecureFastForTests,
}

impl KsfProfile {
    /// The profile new codes get unless a test asks otherwise.
    pub const DEFAULT: Self = Self::Argon2idM64T3;

    /// The Argon2id instance for this profile.
    pub fn argon2(self) -> argon2::Argon2<'static> {
        let (m_kib, t, p) = match self {
            // Fuzzers would spend all their time in Argon2 otherwise.
            _ if cfg!(fuzzing) => (8, 1, 1),
            Self::Argon2idM64T3 => (64 * 1024, 3, 1),
            Self::InsecureFastForTests => (8, 1, 1),
        };
        // The parameters are constants within argon2's documented bounds,
        // so `Params::new` cannot fail here; fall back to the library's
        // default (still Argon2id) rather than panic if it ever did.
        let params = argon2::Params::new(m_kib, t, p, None).unwrap_or_default();
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    }

    /// Whether this profile is for tests only.
    pub fn is_insecure(self) -> bool {
        matches!(self, Self::InsecureFastForTests)
    }

    /// Stable name for the store and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Argon2idM64T3 => "argon2id-m64-t3-p1",
            Self::InsecureFastForTests => "insecure-fast-for-tests",
        }
    }

    /// Parses [`KsfProfile::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Argon2idM64T3, Self::InsecureFastForTests]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_build_and_parse() {
        for p in [KsfProfile::Argon2idM64T3, KsfProfile::InsecureFastForTests] {
            assert_eq!(KsfProfile::parse(p.as_str()), Some(p));
            let params = p.argon2().params().clone();
            assert!(params.m_cost() >= 8);
        }
        assert_eq!(KsfProfile::DEFAULT.argon2().params().m_cost(), 64 * 1024);
        assert_eq!(KsfProfile::DEFAULT.argon2().params().t_cost(), 3);
    }
}
