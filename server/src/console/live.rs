//! Live host status for open pages: server-sent events with every host's
//! online and locked state, failures, last seen and lock action, sent when
//! any of them changes. A few streams at once, each for a bounded time (the
//! browser reconnects, signed in again), so open tabs cost the store a
//! bounded number of reads.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use serde::Serialize;

use super::{auth::SignedIn, view, ConsoleError, ConsoleState};

/// Streams open at once, across every admin.
pub(super) const MAX_STREAMS: usize = 32;
/// How often a stream reads the hosts.
const EVERY: Duration = Duration::from_secs(2);
/// How long one stream lasts before the browser opens another.
const LIFETIME: Duration = Duration::from_secs(300);

/// One host's live state, with its texts made as the pages make them.
#[derive(Serialize, PartialEq)]
struct Live {
    host: String,
    online: bool,
    locked: bool,
    failures: u32,
    /// When it was last seen ([`view::last_seen_text`]).
    seen: String,
    /// The lock action it offers ([`view::lock_offer`]).
    offer: Option<&'static str>,
}

/// GET /events
pub(super) async fn events(
    State(state): State<Arc<ConsoleState>>,
    me: SignedIn,
) -> Result<Response, ConsoleError> {
    let place = state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ConsoleError::Busy)?;
    let ends = Instant::now() + LIFETIME;
    let start = (state, me, None::<Vec<Live>>, place);
    let stream = futures_util::stream::unfold(start, move |(state, me, last, place)| async move {
        loop {
            // A session that ended (signed out, its admin reset or
            // removed) ends its stream too.
            if Instant::now() >= ends || !me.still_signed_in(&state).await {
                return None;
            }
            let hosts = state.blocking(|s| s.hosts()).await.ok()?;
            let now: Vec<Live> = hosts
                .into_iter()
                .map(|h| Live {
                    seen: view::last_seen_text(h.online, h.last_seen),
                    offer: view::lock_offer(h.locked, h.failures),
                    host: h.name,
                    online: h.online,
                    locked: h.locked,
                    failures: h.failures,
                })
                .collect();
            if last.as_ref() != Some(&now) {
                let data = serde_json::to_string(&now).ok()?;
                let event = Event::default().event("hosts").data(data);
                return Some((Ok::<_, Infallible>(event), (state, me, Some(now), place)));
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
