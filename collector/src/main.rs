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
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { data_dir, listen } => serve(data_dir, listen),
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

fn serve(data_dir: PathBuf, listen: SocketAddr) -> Result<(), String> {
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
        // The bound address, so that `--listen 127.0.0.1:0` tells which port it got.
        let bound = listener.local_addr().unwrap_or(listen);
        log::info(&format!(
            "tally-collector listening on http://{bound} (data in {})",
            data_dir.display()
        ));
        axum::serve(listener, api::router(api::AppState { store }))
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
