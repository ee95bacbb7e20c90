//! otpatchctl, the command-line client of otpatchd. See `otpatchctl --help` and ctl/README.md.

mod bundle_cmd;
mod cli;
mod client;
mod error;
mod log;
mod out;
mod policy_check;
mod render;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use otpatch_common::units::format_duration;
use serde_json::json;

use crate::cli::{BundleCommand, Cli, Command, LivepatchCommand, PolicyCommand, WindowCommand};
use crate::client::Client;
use crate::error::{exit, names, CtlError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            out::error_line(&format!("otpatchctl: {}", e.message));
            if json {
                out::json(&e.to_json());
            }
            e.code
        }
    };
    ExitCode::from(code)
}

fn run(cli: Cli) -> Result<u8, CtlError> {
    match &cli.command {
        Command::Policy(PolicyCommand::Check(args)) => policy_check::run(args, cli.json),
        Command::Bundle(BundleCommand::Create(args)) => bundle_cmd::create(args, cli.json),
        Command::Bundle(BundleCommand::Inspect(args)) => bundle_cmd::inspect(args, cli.json),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(clap_complete::Shell::from(*shell), &mut Cli::command(), "otpatchctl", &mut buf);
            out::write_trusted(&String::from_utf8_lossy(&buf));
            Ok(exit::OK)
        }
        Command::Man { out: None } => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(man_command())
                .render(&mut buf)
                .map_err(|e| CtlError::failed(format!("cannot render the man page: {e}")))?;
            out::write_trusted(&String::from_utf8_lossy(&buf));
            Ok(exit::OK)
        }
        Command::Man { out: Some(dir) } => {
            let written = write_man_pages(dir)
                .map_err(|e| CtlError::failed(format!("cannot write man pages to {}: {e}", dir.display())))?;
            if cli.json {
                let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
                out::json(&json!({"files": files}));
            } else {
                for p in &written {
                    out::line(&p.display().to_string());
                }
            }
            Ok(exit::OK)
        }
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CtlError::failed(format!("cannot start the async runtime: {e}")))?;
            rt.block_on(run_dbus(&cli))
        }
    }
}

/// The command as the man pages show it (no `help` subcommand page).
fn man_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes `otpatchctl.1` and one page per subcommand (`otpatchctl-window-schedule.1`...) into `dir`.
fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, dir, written)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    walk(&man_command(), dir, &mut written)?;
    Ok(written)
}

/// The commands that talk to the daemon.
async fn run_dbus(cli: &Cli) -> Result<u8, CtlError> {
    let json = cli.json;
    if let Command::Watch(args) = &cli.command {
        return watch::run(args, json, cli.timeout).await;
    }
    let client = Client::connect(cli.timeout).await?;
    let proxy = &client.proxy;
    match &cli.command {
        Command::Status => {
            let text = client.status_text().await?;
            if json {
                out::json_text(text.trim());
            } else {
                let snapshot = client::parse_status(&text)?;
                out::write(&render::status(&snapshot, Timestamp::now(), &TimeZone::system()));
            }
        }
        Command::Livepatch(LivepatchCommand::List) => {
            let text = proxy.list_livepatches().await.map_err(|e| client.err(e))?;
            if json {
                out::json_text(text.trim());
            } else {
                let list: Vec<otpatch_common::api::LivepatchInfo> = serde_json::from_str(&text).map_err(|e| {
                    CtlError::new(
                        exit::FAILURE,
                        names::BAD_REPLY,
                        format!("otpatchd sent a list otpatchctl cannot read: {e}"),
                    )
                })?;
                if list.is_empty() {
                    out::line("no livepatch applied");
                } else {
                    out::write(&render::livepatch_table(&list));
                }
            }
        }
        Command::Health => {
            let text = proxy.get_health().await.map_err(|e| client.err(e))?;
            if json {
                out::json_text(text.trim());
            } else {
                let table: Vec<otpatch_common::api::ProbeReport> = serde_json::from_str(&text).map_err(|e| {
                    CtlError::new(
                        exit::FAILURE,
                        names::BAD_REPLY,
                        format!("otpatchd sent a probe table otpatchctl cannot read: {e}"),
                    )
                })?;
                if table.is_empty() {
                    out::line("no health probes in the policy");
                } else {
                    out::write(&render::probe_table(&table));
                }
            }
        }
        Command::Window(WindowCommand::Schedule(a)) => {
            let id = proxy
                .schedule_window(&a.start, &format_duration(a.duration), a.tz.as_deref().unwrap_or(""), !a.manual)
                .await
                .map_err(|e| client.err(e))?;
            if json {
                out::json(&json!({"id": id}));
            } else {
                out::line(&id);
            }
        }
        Command::Window(WindowCommand::List { days }) => {
            let windows = proxy.list_windows(*days).await.map_err(|e| client.err(e))?;
            if json {
                out::json(&json!(windows));
            } else if windows.is_empty() {
                out::line(&format!("no windows in the next {days} days"));
            } else {
                out::write(&render::window_table(&windows, &TimeZone::system()));
            }
        }
        Command::Window(WindowCommand::Cancel { id }) => {
            proxy.cancel_window(id).await.map_err(|e| client.err(e))?;
            if json {
                out::json(&json!({"ok": true, "id": id}));
            } else {
                out::line(&format!("cancelled window {id}"));
            }
        }
        Command::Apply => {
            let id = proxy.apply().await.map_err(|e| client.err(e))?;
            if json {
                out::json(&json!({"id": id}));
            } else {
                out::line(&id);
            }
        }
        Command::Rollback => {
            proxy.rollback().await.map_err(|e| client.err(e))?;
            if json {
                out::json(&json!({"ok": true}));
            } else {
                out::line("rollback requested; follow it with: otpatchctl watch --exit-on-complete");
            }
        }
        Command::Reload => {
            proxy.reload().await.map_err(|e| client.err(e))?;
            if json {
                out::json(&json!({"ok": true}));
            } else {
                out::line("policy reloaded");
            }
        }
        Command::Retry { version } => {
            proxy.retry(version).await.map_err(|e| client.err(e))?;
            if json {
                out::json(&json!({"ok": true, "version": version}));
            } else {
                out::line(&format!("{version} may be installed again by the next window"));
            }
        }
        Command::Log(args) => return log::run(&client, args, json).await,
        Command::Watch(_)
        | Command::Policy(_)
        | Command::Bundle(_)
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(exit::OK)
}
