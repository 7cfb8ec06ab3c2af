//! Operating a relay (SPEC O2, O4, S9, I2): the admin CLI's audit log,
//! the admin console (as the real relay serves it, and in a real headless
//! browser), the metrics endpoint, a relay listening on IPv6, and the
//! command lines themselves (completion, man pages, JSON, prompts, help),
//! and what the relay and the agent tell systemd.

mod audit;
mod cli;
mod console;
mod console_browser;
mod ipv6;
mod metrics;
#[cfg(unix)]
mod service_manager;
