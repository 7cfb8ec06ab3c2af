//! Shared access, GoToMyPC's feature made exact (SPEC S1-S6, S9, S13-S16): a grant
//! inherits the owner's code of that moment, a revoke ends the user's
//! sessions at once, and owner and users are told by mail and on the host.
//! Real relay, agent and client binaries on loopback.

mod grants;
mod notices;
mod recordings;
mod removals;
mod revokes;
mod rights;
