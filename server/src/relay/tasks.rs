//! The tasks a relay owns beside its connections: each is named, started
//! here, and joined at the stop in the order it was started, each within
//! its own deadline (then aborted), so a stuck duty cannot hold the stop
//! and no task outlives the relay that started it.

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;
use tracing::debug;

/// The relay's tasks, joined in order.
#[derive(Default)]
pub(super) struct Tasks {
    owned: Vec<(&'static str, Duration, JoinHandle<()>)>,
}

impl Tasks {
    /// Starts `task`; at the stop it gets `deadline` to finish.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        deadline: Duration,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.own(name, deadline, tokio::spawn(task));
    }

    /// Takes a task started elsewhere.
    pub(super) fn own(&mut self, name: &'static str, deadline: Duration, task: JoinHandle<()>) {
        self.owned.push((name, deadline, task));
    }

    /// Joins every task, in the order they were started.
    pub(super) async fn join(self) {
        for (name, deadline, task) in self.owned {
            Self::join_one(name, deadline, task).await;
        }
    }

    /// Joins one task within `deadline`, or aborts it.
    pub(super) async fn join_one(name: &'static str, deadline: Duration, mut task: JoinHandle<()>) {
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            debug!(task = name, "did not stop in time; aborted");
            task.abort();
        }
    }
}
