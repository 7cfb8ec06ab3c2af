//! Values that count something while they live: an open connection,
//! session or channel ([`Open`], made by [`Tracked`]), an attempt not yet
//! settled ([`Pending`]), a handshake not yet over ([`Handshake`]). Each
//! counts itself down (or records its end) when dropped, so no path, an
//! early return or a cancelled task included, can leave a gauge drifting.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::{counter_vec, HandshakeResult};

/// A live thing counted by an opened/closed pair and a gauge.
#[derive(Clone)]
pub(super) struct Tracked {
    opened: IntCounterVec,
    closed: IntCounterVec,
    open: IntGaugeVec,
}

impl Tracked {
    /// `what` is the metric's stem (`connections`), `label` its one label
    /// (if any) and `values` that label's values.
    pub(super) fn new(
        registry: &Registry,
        what: &str,
        help: &str,
        label: Option<&str>,
        values: &[&str],
    ) -> Result<Self, prometheus::Error> {
        let labels: Vec<&str> = label.into_iter().collect();
        let opened = counter_vec(
            registry,
            &format!("latchkey_{what}_opened_total"),
            &format!("{help}: opened."),
            &labels,
        )?;
        let closed = counter_vec(
            registry,
            &format!("latchkey_{what}_closed_total"),
            &format!("{help}: closed."),
            &labels,
        )?;
        let open = IntGaugeVec::new(
            Opts::new(format!("latchkey_{what}"), format!("{help}: open now.")),
            &labels,
        )?;
        registry.register(Box::new(open.clone()))?;
        let series: Vec<Vec<&str>> = match label {
            Some(_) => values.iter().map(|v| vec![*v]).collect(),
            None => vec![Vec::new()],
        };
        for s in &series {
            opened.with_label_values(s);
            closed.with_label_values(s);
            open.with_label_values(s);
        }
        Ok(Self {
            opened,
            closed,
            open,
        })
    }

    /// One more open, with `values` for the label (none if it has none).
    pub(super) fn open(&self, values: &[&str]) -> Open {
        let open = Open {
            closed: self.closed.with_label_values(values),
            open: self.open.with_label_values(values),
        };
        self.opened.with_label_values(values).inc();
        open.open.inc();
        open
    }
}

/// One open connection, session or channel: counted closed when dropped.
#[must_use = "the thing counts as closed when this is dropped"]
pub(crate) struct Open {
    closed: IntCounter,
    open: IntGauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open.dec();
        self.closed.inc();
    }
}

/// One attempt reserved in the store and not yet settled there: carried by
/// the value that settles it, so the gauge follows it on every path.
#[must_use = "the attempt counts as settled when this is dropped"]
pub(crate) struct Pending(IntGauge);

impl Pending {
    /// Counts one more attempt on `gauge`, until the guard drops.
    pub(super) fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A handshake in progress: recorded once, as `Failed` if dropped before
/// [`Handshake::finish`] (a cancelled task).
pub(crate) struct Handshake {
    counter: IntCounterVec,
    done: bool,
}

impl Handshake {
    /// A handshake that starts now, to be recorded on `counter`.
    pub(super) fn new(counter: IntCounterVec) -> Self {
        Self {
            counter,
            done: false,
        }
    }

    /// Records how the handshake ended.
    pub(crate) fn finish(mut self, result: HandshakeResult) {
        self.counter.with_label_values(&[result.label()]).inc();
        self.done = true;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if !self.done {
            self.counter
                .with_label_values(&[HandshakeResult::Failed.label()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::{tests::value, ConnRole, HandshakeResult, Metrics};

    #[test]
    fn an_open_gauge_is_its_opened_minus_closed_counters() {
        let m = Metrics::new().unwrap();
        let a = m.connection(ConnRole::Session);
        let b = m.connection(ConnRole::Session);
        let c = m.connection(ConnRole::Host);
        drop(a);
        let text = m.render().unwrap();
        let get = |name: &str, role: &str| {
            value(&text, &format!("{name}{{role=\"{role}\"}}")).unwrap_or(f64::NAN)
        };
        for role in ["session", "host", "user"] {
            assert_eq!(
                get("latchkey_connections", role),
                get("latchkey_connections_opened_total", role)
                    - get("latchkey_connections_closed_total", role),
                "{role}"
            );
        }
        assert_eq!(get("latchkey_connections", "session"), 1.0);
        assert_eq!(get("latchkey_connections_closed_total", "session"), 1.0);
        assert_eq!(get("latchkey_connections", "host"), 1.0);
        drop((b, c));
    }

    #[test]
    fn a_handshake_dropped_unfinished_counts_as_failed_once() {
        let m = Metrics::new().unwrap();
        m.handshake().finish(HandshakeResult::Timeout);
        drop(m.handshake());
        let text = m.render().unwrap();
        assert_eq!(
            value(&text, "latchkey_handshakes_total{result=\"timeout\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "latchkey_handshakes_total{result=\"failed\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn a_pending_attempt_counts_until_its_guard_drops() {
        let m = Metrics::new().unwrap();
        let a = m.pending_attempt();
        let b = m.pending_attempt();
        assert_eq!(m.attempts_pending.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(m.attempts_pending.get(), 0);
    }
}
