//! The agent as a Windows service: `latchkey host service install` and
//! `uninstall`, and the entry point the service control manager starts.
//!
//! The service runs as its own virtual account, `NT SERVICE\LatchkeyHost`:
//! unprivileged, with no password to keep, and never LocalSystem, which
//! could read every file of the machine. Its home (by default
//! `%ProgramData%\Latchkey`) gets an ACL that lets only that account,
//! SYSTEM and Administrators in, set by the system's own `icacls`. It
//! starts at boot and is restarted when it fails. What to do is computed
//! as data ([`ServicePlan`], [`acl_arguments`]), so the plans are tested
//! on every platform; only carrying them out is Windows'.

use std::{ffi::OsString, path::Path, time::Duration};

/// The service's name (`sc.exe query LatchkeyHost`).
pub const SERVICE_NAME: &str = "LatchkeyHost";

/// The account the service runs as: its virtual account.
pub const SERVICE_ACCOUNT: &str = "NT SERVICE\\LatchkeyHost";

/// Waits before each restart after a failure (then the last again), and
/// how long a run must last for the count of failures to start over.
pub const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// A day without failing and the restart delays start over.
pub const FAILURE_RESET: Duration = Duration::from_secs(24 * 3600);

/// What installing the service registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    /// The service's name.
    pub name: &'static str,
    /// What the Services console shows.
    pub display_name: &'static str,
    /// The program: this `latchkey.exe`.
    pub executable: std::path::PathBuf,
    /// Its arguments: the home, then the service's own entry point.
    pub arguments: Vec<OsString>,
    /// The account it runs as.
    pub account: &'static str,
}

impl ServicePlan {
    /// The plan for the agent in `home`, run by `executable`.
    pub fn new(executable: &Path, home: &Path) -> Self {
        Self {
            name: SERVICE_NAME,
            display_name: "Latchkey host agent",
            executable: executable.to_owned(),
            arguments: vec![
                "--home".into(),
                home.as_os_str().to_owned(),
                "host".into(),
                "service".into(),
                "run".into(),
            ],
            account: SERVICE_ACCOUNT,
        }
    }
}

/// The arguments of `icacls` that leave `home` (and what it holds) to
/// `account`, SYSTEM and Administrators alone: inherited entries removed,
/// full control granted to the three, inherited by what is inside.
pub fn acl_arguments(home: &Path, account: &str) -> Vec<OsString> {
    let grant = |who: &str| OsString::from(format!("{who}:(OI)(CI)F"));
    vec![
        home.as_os_str().to_owned(),
        "/inheritance:r".into(),
        "/grant:r".into(),
        grant(account),
        // SYSTEM and Administrators by their well-known SIDs, whatever the
        // system's language names them.
        grant("*S-1-5-18"),
        grant("*S-1-5-32-544"),
        "/T".into(),
        "/Q".into(),
    ]
}

/// Why the service could not be installed, removed or run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Not on Windows: systemd and launchd have their own files.
    #[error(
        "the Windows service is for Windows; on Linux use client/service/latchkey-host.service, on macOS client/service/com.latchkey.host.plist (docs/host.md)"
    )]
    NotWindows,
    /// The home holds no host the service could run (not enrolled, or its
    /// config unreadable).
    #[error(transparent)]
    Home(#[from] crate::config::ConfigError),
    /// The service control manager refused a step.
    #[error("the service manager, {0}")]
    Manager(String),
    /// `icacls` failed.
    #[error("setting the ACL of {path}: {why}")]
    Acl {
        /// The home.
        path: String,
        /// What icacls said.
        why: String,
    },
}

#[cfg(windows)]
mod system {
    //! Carrying the plans out, through the windows-service crate and
    //! `icacls`.

    use std::{ffi::OsString, path::Path, sync::OnceLock, time::Duration};

    use tokio_util::sync::CancellationToken;
    use windows_service::{
        define_windows_service,
        service::{
            ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
            ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
            ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
        },
        service_control_handler::{self, ServiceControlHandlerResult},
        service_dispatcher,
        service_manager::{ServiceManager, ServiceManagerAccess},
    };

    use super::{acl_arguments, ServiceError, ServicePlan, FAILURE_RESET, RESTART_DELAYS};
    use crate::config::Home;

    /// The manager's refusal of `step`, with the system's reason.
    fn refused(step: &'static str) -> impl FnOnce(windows_service::Error) -> ServiceError {
        move |e| {
            let why = match &e {
                windows_service::Error::Winapi(io) => io.to_string(),
                other => other.to_string(),
            };
            ServiceError::Manager(format!("{step}: {why}"))
        }
    }

    /// Registers the service, sets its restarts and the home's ACL, and
    /// starts it.
    pub(super) fn install(plan: &ServicePlan, home: &Path) -> Result<(), ServiceError> {
        let acl = std::process::Command::new("icacls")
            .args(acl_arguments(home, plan.account))
            .output()
            .map_err(|e| ServiceError::Acl {
                path: home.display().to_string(),
                why: e.to_string(),
            })?;
        if !acl.status.success() {
            return Err(ServiceError::Acl {
                path: home.display().to_string(),
                why: String::from_utf8_lossy(&acl.stderr).trim().to_string(),
            });
        }
        let manager = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )
        .map_err(refused("connecting"))?;
        let info = ServiceInfo {
            name: plan.name.into(),
            display_name: plan.display_name.into(),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: plan.executable.clone(),
            launch_arguments: plan.arguments.clone(),
            dependencies: vec![],
            account_name: Some(plan.account.into()),
            account_password: None,
        };
        let service = manager
            .create_service(
                &info,
                ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS,
            )
            .map_err(refused("creating the service"))?;
        // Half installed is not installed: a service left without its
        // restarts, or that cannot start, is removed again.
        configure_and_start(&service).inspect_err(|_| {
            let _ = service.delete();
        })
    }

    fn configure_and_start(
        service: &windows_service::service::Service,
    ) -> Result<(), ServiceError> {
        let actions = RESTART_DELAYS
            .iter()
            .map(|delay| ServiceAction {
                action_type: ServiceActionType::Restart,
                delay: *delay,
            })
            .collect();
        service
            .update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(FAILURE_RESET),
                reboot_msg: None,
                command: None,
                actions: Some(actions),
            })
            .map_err(refused("setting its restarts"))?;
        service
            .start::<OsString>(&[])
            .map_err(refused("starting it"))?;
        Ok(())
    }

    /// Stops the service (waiting up to 30 s) and removes it.
    pub(super) fn uninstall(name: &str) -> Result<(), ServiceError> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map_err(refused("connecting"))?;
        let service = manager
            .open_service(
                name,
                ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
            )
            .map_err(refused("opening the service"))?;
        service.delete().map_err(refused("removing it"))?;
        if service
            .query_status()
            .map_err(refused("asking its state"))?
            .current_state
            != ServiceState::Stopped
        {
            let _ = service.stop();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                match service.query_status() {
                    Ok(status) if status.current_state != ServiceState::Stopped => {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// The home the service was started for (set before the dispatcher
    /// calls [`service_main`] on its own thread).
    static HOME: OnceLock<Home> = OnceLock::new();

    define_windows_service!(ffi_service_main, service_main);

    /// Hands this process to the service control manager, which runs the
    /// agent in `home` until it is told to stop.
    pub(super) fn run(home: Home, name: &str) -> Result<(), ServiceError> {
        let _ = HOME.set(home);
        service_dispatcher::start(name, ffi_service_main).map_err(refused(
            "starting the dispatcher (run by the service manager only)",
        ))
    }

    fn service_main(_arguments: Vec<OsString>) {
        let Some(home) = HOME.get() else {
            return;
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                stop.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(status) = service_control_handler::register(super::SERVICE_NAME, handler) else {
            return;
        };
        let report = |state, accept, code| {
            let _ = status.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: state,
                controls_accepted: accept,
                exit_code: ServiceExitCode::Win32(code),
                checkpoint: 0,
                wait_hint: Duration::from_secs(10),
                process_id: None,
            });
        };
        report(
            ServiceState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            0,
        );
        let ran = tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|runtime| {
                runtime
                    .block_on(crate::host::run(home, shutdown))
                    .map_err(|e| format!("{e:#}"))
            });
        match ran {
            Ok(()) => report(ServiceState::Stopped, ServiceControlAccept::empty(), 0),
            // Ended without saying it stopped: the manager counts that as
            // a failure and restarts the service (a stop it reports is
            // final, whatever its status).
            Err(why) => {
                tracing::error!("the agent stopped: {why}");
                std::process::exit(1);
            }
        }
    }
}

/// Installs and starts the service for the agent in `home`, run by this
/// executable.
pub fn install(home: &crate::config::Home) -> Result<(), ServiceError> {
    home.host()?;
    #[cfg(windows)]
    {
        let exe = std::env::current_exe()
            .map_err(|e| ServiceError::Manager(format!("this program's path: {e}")))?;
        system::install(&ServicePlan::new(&exe, &home.path), &home.path)
    }
    #[cfg(not(windows))]
    Err(ServiceError::NotWindows)
}

/// Stops and removes the service.
pub fn uninstall() -> Result<(), ServiceError> {
    #[cfg(windows)]
    return system::uninstall(SERVICE_NAME);
    #[cfg(not(windows))]
    Err(ServiceError::NotWindows)
}

/// Runs the agent in `home` as the service (what the manager starts).
pub fn run(home: crate::config::Home) -> Result<(), ServiceError> {
    #[cfg(windows)]
    return system::run(home, SERVICE_NAME);
    #[cfg(not(windows))]
    {
        let _ = home;
        Err(ServiceError::NotWindows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_runs_this_program_on_its_home_as_its_own_virtual_account() {
        let plan = ServicePlan::new(
            Path::new(r"C:\Program Files\Latchkey\latchkey.exe"),
            Path::new(r"C:\ProgramData\Latchkey"),
        );
        assert_eq!(plan.name, "LatchkeyHost");
        assert_eq!(plan.account, r"NT SERVICE\LatchkeyHost");
        assert_ne!(plan.account, "LocalSystem");
        let args: Vec<_> = plan
            .arguments
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--home",
                r"C:\ProgramData\Latchkey",
                "host",
                "service",
                "run"
            ]
        );
    }

    #[test]
    fn the_homes_acl_lets_in_the_service_system_and_administrators_alone() {
        let args: Vec<_> = acl_arguments(Path::new(r"C:\ProgramData\Latchkey"), SERVICE_ACCOUNT)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                r"C:\ProgramData\Latchkey",
                "/inheritance:r",
                "/grant:r",
                r"NT SERVICE\LatchkeyHost:(OI)(CI)F",
                "*S-1-5-18:(OI)(CI)F",
                "*S-1-5-32-544:(OI)(CI)F",
                "/T",
                "/Q"
            ]
        );
    }

    #[cfg(not(windows))]
    #[test]
    fn elsewhere_the_service_commands_point_to_the_platforms_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::config::Home::locate(Some(dir.path().to_owned()));
        assert!(matches!(
            install(&home),
            Err(ServiceError::Home(
                crate::config::ConfigError::NotEnrolled { .. }
            ))
        ));
        assert!(matches!(uninstall(), Err(ServiceError::NotWindows)));
        assert!(uninstall()
            .unwrap_err()
            .to_string()
            .contains("latchkey-host.service"));
    }
}
