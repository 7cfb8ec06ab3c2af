//! Where password hashes are computed: a few threads of their own, for the
//! console's life. Argon2id takes 19 MiB per hash; run on ever-changing
//! blocking threads, each free went to another malloc arena and was kept
//! (a sign-in flood left the relay at 2.3 GB). On the same few threads the
//! memory is reused, and no more hashes run at once than there are threads.

use std::{
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use super::ConsoleError;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of hashing threads with a short queue.
pub(super) struct Hashing {
    jobs: mpsc::SyncSender<Job>,
}

/// Threads that hash at once.
const THREADS: usize = 4;
/// Sign-ins that may wait for a thread; more are told the console is busy.
const QUEUE: usize = 256;
/// How long a queued sign-in waits for its result.
const WAIT: Duration = Duration::from_secs(10);

impl Hashing {
    pub(super) fn new() -> Self {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..THREADS {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("console-hash-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take the next job.
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("console: a hashing thread did not start: {e}");
            }
        }
        Self { jobs }
    }

    /// Runs `work` (which checks or makes a password hash) on the pool.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ConsoleError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Box::new(move || {
                // A sign-in whose requester gave up waiting is not run: it
                // would record a login (and spend its code) nobody sees.
                if !tx.is_closed() {
                    let _ = tx.send(work());
                }
            }))
            .map_err(|_| ConsoleError::Busy)?;
        tokio::time::timeout(WAIT, rx)
            .await
            .map_err(|_| ConsoleError::Busy)?
            .map_err(|_| ConsoleError::Internal("a password check failed"))
    }
}

thread_local! {
    /// Argon2's working memory, kept by each hashing thread between checks.
    static MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most memory a stored hash may ask for (the console's own use
/// 19 MiB).
const MAX_MEMORY_KIB: u32 = 64 * 1024;

/// Whether `password` matches the PHC string `phc`, computed in this
/// thread's own Argon2 memory (no allocation per check).
pub(super) fn verify(password: &[u8], phc: &str) -> bool {
    use argon2::{password_hash::PasswordHash, Algorithm, Argon2, Params, Version};
    use subtle::ConstantTimeEq;
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(params), Some(salt), Some(expected)) =
        (Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    if params.m_cost() > MAX_MEMORY_KIB {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = zeroize::Zeroizing::new(vec![0u8; expected.len()]);
    let blocks = params.block_count();
    let hashed = MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
            .is_ok()
    });
    hashed && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}
