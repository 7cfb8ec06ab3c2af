//! `latchkey man --dir DIR`: man pages from the clap definitions, one for
//! `latchkey` and one for each command (`latchkey-host-set-code.1`), so
//! packagers install pages that always match the binary.

use std::{path::Path, process::ExitCode};

use anyhow::Context;

/// Writes the pages into `dir` (made if missing) and says how many.
pub(crate) fn write_pages(command: clap::Command, dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let source = format!("latchkey {}", env!("CARGO_PKG_VERSION"));
    let mut written = 0;
    write_page(&command, dir, &source, &mut written)
        .with_context(|| format!("writing man pages to {}", dir.display()))?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `command`'s page and those of its visible subcommands, each
/// footed with the release it documents (`source`).
fn write_page(
    command: &clap::Command,
    dir: &Path,
    source: &str,
    written: &mut usize,
) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, source, written)?;
    }
    clap_mangen::Man::new(command.clone())
        .source(source)
        .manual("Latchkey")
        .generate_to(dir)?;
    *written += 1;
    Ok(())
}
