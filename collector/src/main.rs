//! `tally-collector`: stores Tally's metering events and serves the query API.

use tally_collector::{api, log, store};

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use store::Store;

#[derive(Parser)]
#[command(
    name = "tally-collector",
    version,
    about = "Tally's event store and query API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ingest, the query API and health checks.
    Serve {
        /// Where the database lives.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Address to listen on; plain HTTP only on loopback.
        #[arg(long, default_value = "127.0.0.1:9700")]
        listen: SocketAddr,
        /// Delete raw events older than this many days (hourly); rollups are kept.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        retention_days: Option<u32>,
    },
    /// Manage orgs and their keys.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
        #[arg(long, default_value = "data", global = true)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an org and print its key (shown this once; only its hash is stored).
    Create { name: String },
    /// Give an org a new key; the old one is refused from now on.
    RotateKey { name: String },
    /// List orgs.
    List,
    /// Refuse an org's key from now on (its data stays).
    Disable { name: String },
    /// Accept an org's key again.
    Enable { name: String },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            data_dir,
            listen,
            retention_days,
        } => serve(data_dir, listen, retention_days),
        Command::Org { command, data_dir } => org(command, &data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-collector: {e}");
            ExitCode::FAILURE
        }
    }
}

fn org(command: OrgCommand, data_dir: &std::path::Path) -> Result<(), String> {
    let store = Store::open(data_dir).map_err(|e| e.to_string())?;
    match command {
        OrgCommand::Create { name } => {
            let key = store
                .create_org(&name, now_ms())
                .map_err(|e| e.to_string())?;
            eprintln!("Created org {name}. Its key is shown once, below; store it as a secret.");
            println!("{key}");
        }
        OrgCommand::RotateKey { name } => {
            let key = store.rotate_key(&name).map_err(|e| e.to_string())?;
            eprintln!("New key for org {name}; the previous key no longer works.");
            println!("{key}");
        }
        OrgCommand::Disable { name } => {
            store.set_disabled(&name, true).map_err(|e| e.to_string())?;
            eprintln!("Org {name} disabled: its key is refused from now on.");
        }
        OrgCommand::Enable { name } => {
            store
                .set_disabled(&name, false)
                .map_err(|e| e.to_string())?;
            eprintln!("Org {name} enabled.");
        }
        OrgCommand::List => {
            for (name, created, disabled) in store.list_orgs().map_err(|e| e.to_string())? {
                println!(
                    "{name}\tcreated {}{}",
                    tally::time::format_rfc3339_ms(created),
                    if disabled { "\tdisabled" } else { "" }
                );
            }
        }
    }
    Ok(())
}

fn serve(data_dir: PathBuf, listen: SocketAddr, retention_days: Option<u32>) -> Result<(), String> {
    if !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to serve plain HTTP on {listen}: org keys would cross the network in clear. \
             Listen on a loopback address (127.0.0.1) behind a TLS-terminating proxy"
        ));
    }
    let store = Arc::new(Store::open(&data_dir).map_err(|e| e.to_string())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        if let Some(days) = retention_days {
            let store = store.clone();
            tokio::spawn(async move {
                // The first tick is immediate: prune at start, then hourly.
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    let s = store.clone();
                    match tokio::task::spawn_blocking(move || s.prune(days, now_ms())).await {
                        Ok(Ok(n)) if n > 0 => log::info(&format!(
                            "retention: deleted {n} events older than {days} days"
                        )),
                        Ok(Err(e)) => log::error(&format!("retention: {e}")),
                        _ => {}
                    }
                }
            });
        }
        // The bound address, so that `--listen 127.0.0.1:0` tells which port it got.
        let bound = listener.local_addr().unwrap_or(listen);
        log::info(&format!(
            "tally-collector listening on http://{bound} (data in {})",
            data_dir.display()
        ));
        axum::serve(
            listener,
            api::router(api::AppState {
                store,
                metrics: Default::default(),
            }),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server: {e}"))?;
        log::info("tally-collector stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
