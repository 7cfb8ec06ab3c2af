//! How many sessions one user may hold (SPEC X6): a few on each host and
//! some more in all, so one grant holder cannot take every place a host has
//! (its streams, the keys its agent keeps per session) and deny it to the
//! owner and the other users. The count is the store's, taken in the
//! verdict's transaction, so it is exact across relays and concurrent
//! logins. A resumed session replaces its old one and is not counted again.

/// Sessions one user may have open on one host.
pub const PER_HOST: u32 = 16;

/// Sessions one user may have open on all hosts together.
pub const IN_ALL: u32 = 64;

/// A user's open sessions, as the deciding transaction sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Open {
    /// On the host of the login.
    pub on_host: u32,
    /// On every host.
    pub in_all: u32,
}

/// Why a user may not start another session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// [`PER_HOST`] on this host already.
    OnHost,
    /// [`IN_ALL`] on all hosts already.
    InAll,
}

/// Whether one more session fits.
pub fn room_for_one_more(open: Open) -> Result<(), Full> {
    if open.on_host >= PER_HOST {
        Err(Full::OnHost)
    } else if open.in_all >= IN_ALL {
        Err(Full::InAll)
    } else {
        Ok(())
    }
}

impl Full {
    /// What the user is told (a proven grant holder may learn it).
    pub fn explain(self, host: &str) -> String {
        match self {
            Self::OnHost => format!(
                "you have {PER_HOST} sessions open on '{host}' already, the most one user may \
                 have: end one (or wait for one to end) and try again"
            ),
            Self::InAll => format!(
                "you have {IN_ALL} sessions open already, the most one user may have: end one \
                 and try again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_on_a_host_and_in_all_each_stop_one_more() {
        assert_eq!(
            room_for_one_more(Open {
                on_host: PER_HOST - 1,
                in_all: PER_HOST - 1
            }),
            Ok(())
        );
        assert_eq!(
            room_for_one_more(Open {
                on_host: PER_HOST,
                in_all: PER_HOST
            }),
            Err(Full::OnHost)
        );
        assert_eq!(
            room_for_one_more(Open {
                on_host: 0,
                in_all: IN_ALL
            }),
            Err(Full::InAll)
        );
    }
}
