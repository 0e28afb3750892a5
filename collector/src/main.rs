//! `tally-collector`: stores Tally's metering events and serves the query API.

use tally_collector::{alerts, api, log, oidc, store, users, web};

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use store::{Store, StoreArgs};

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
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on; plain HTTP only on loopback.
        #[arg(long, default_value = "127.0.0.1:9700")]
        listen: SocketAddr,
        /// Delete raw events older than this many days (hourly); rollups are kept.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        retention_days: Option<u32>,
        /// TLS certificate chain (PEM); with --tls-key, serve HTTPS.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP on a non-loopback address because something in front already
        /// authenticates and encrypts it: a mesh sidecar terminating mTLS, or a private
        /// container network.
        #[arg(long, conflicts_with = "tls_cert")]
        plaintext_behind_mesh: bool,
        /// Sign-in by SSO (OpenID Connect) and local passwords.
        #[command(flatten)]
        sign_in: Box<oidc::Args>,
        /// Who may read /metrics.
        #[command(flatten)]
        metrics: api::MetricsArgs,
        /// Where alert webhooks may send.
        #[command(flatten)]
        alerts: AlertArgs,
        /// OpenTelemetry export.
        #[command(flatten)]
        otlp: tally_collector::otlp::Args,
    },
    /// Manage alert webhooks, and read the alerts sent.
    Alert {
        #[command(subcommand)]
        command: AlertCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage budgets: spend limits per period that filters enforce (PRODUCT.md, "Rules and
    /// budgets").
    Budget {
        #[command(subcommand)]
        command: BudgetCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage the people who sign in to the dashboard.
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage orgs and their keys.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage mesh tokens: what a filter serving several orgs sends its events with.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage prices: the table in force and each org's own rates (every collector on the
    /// database applies a change within a second).
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Price an org's stored events again with the prices in force; the rollups follow, and the
    /// repricing is recorded.
    Reprice {
        #[arg(long)]
        org: String,
        /// From this time (RFC 3339 or a date); default: the first event.
        #[arg(long)]
        from: Option<String>,
        /// Before this time; default: the last event.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Stream stored events out for a data warehouse (NDJSON, CSV or Parquet), in memory that
    /// does not grow with their number.
    Export(tally_collector::export::Args),
}

/// `serve`'s alert options.
#[derive(clap::Args)]
struct AlertArgs {
    /// Let alert webhooks reach private (RFC 1918, fc00::/7, 100.64/10) and loopback addresses;
    /// link-local and cloud metadata addresses stay refused.
    #[arg(long)]
    alert_allow_private: bool,
    /// Let alert webhooks reach this host (HOST or HOST:PORT), whatever it resolves to; repeat
    /// for several.
    #[arg(long = "alert-allow-host", value_name = "HOST[:PORT]", value_parser = alerts::parse_allow_host)]
    alert_allow_hosts: Vec<(String, Option<u16>)>,
    /// The wait before a delivery's first retry, in ms (then 3 times longer each time; tests).
    #[arg(long, default_value_t = 5000, hide = true)]
    alert_retry_base_ms: i64,
    /// How often the alert detectors run, in ms (tests).
    #[arg(long, default_value_t = 60_000, hide = true)]
    alert_detect_every_ms: u64,
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// Create or change an org's budget (a new one counts the period's spend so far).
    Set {
        name: String,
        #[arg(long)]
        org: String,
        /// What it covers: FIELD=PATTERN (team, app, feature, task, user, namespace, workload,
        /// principal, provider, model; an exact value or a `*` glob), repeated; none: the org.
        #[arg(long = "scope", value_name = "FIELD=VALUE")]
        scope: Vec<String>,
        /// day, week or month (UTC; weeks start on Monday).
        #[arg(long)]
        period: String,
        #[arg(long)]
        limit_usd: f64,
        /// The fraction of the limit that raises the warning alert.
        #[arg(long, default_value_t = 0.8)]
        warn_at: f64,
        /// alert, block, downgrade:MODEL or shadow.
        #[arg(long)]
        action: String,
    },
    /// An org's budgets and their state.
    List {
        #[arg(long)]
        org: String,
    },
    /// Delete an org's budget.
    Delete {
        name: String,
        #[arg(long)]
        org: String,
    },
    /// Count an org's budgets' spend in their current periods again from the stored events.
    Rebuild {
        #[arg(long)]
        org: String,
    },
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Add a webhook to an org and print its signing secret (shown this once).
    Add {
        name: String,
        #[arg(long)]
        org: String,
        /// http:// or https:// (recommended) URL; a Slack incoming webhook works as is.
        #[arg(long)]
        url: String,
        /// The kinds it takes, comma-separated (default: all): budget_warning, budget_limit,
        /// anomaly, unpriced_model, events_dropped.
        #[arg(long, value_delimiter = ',')]
        kinds: Option<Vec<String>>,
        /// Let this hook reach a private or loopback address.
        #[arg(long)]
        allow_private: bool,
    },
    /// An org's webhooks (never their secrets; URLs without their path).
    List {
        #[arg(long)]
        org: String,
    },
    /// Delete an org's webhook.
    Delete {
        name: String,
        #[arg(long)]
        org: String,
    },
    /// An org's latest alerts and their deliveries.
    History {
        #[arg(long)]
        org: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Put a price table in force (the JSON `make prices` writes as src/prices.json).
    Load { file: PathBuf },
    /// Which table is in force, and how many models it lists.
    Show,
    /// Give an org its own rate for a model (USD per 1M tokens), or with `--model '*'` and
    /// `--discount-percent` a discount on every model.
    SetRate {
        #[arg(long)]
        org: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        input: Option<f64>,
        #[arg(long)]
        cached_input: Option<f64>,
        #[arg(long)]
        cache_write: Option<f64>,
        #[arg(long)]
        output: Option<f64>,
        #[arg(long)]
        discount_percent: Option<f64>,
    },
    /// An org's own rates.
    Rates {
        #[arg(long)]
        org: String,
    },
    /// Remove an org's rate for a model (or, with `--model '*'`, its discount).
    DeleteRate {
        #[arg(long)]
        org: String,
        #[arg(long)]
        model: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a mesh token and print it (shown this once; only its hash is stored).
    #[command(group = clap::ArgGroup::new("scope").required(true).args(["orgs", "all_orgs"]))]
    Create {
        name: String,
        /// An org the token may send events for (repeat for several).
        #[arg(long = "org", value_name = "ORG")]
        orgs: Vec<String>,
        /// The token may send events for every enabled org, present and future.
        #[arg(long)]
        all_orgs: bool,
    },
    /// List tokens: their orgs, when they were made, whether revoked.
    List,
    /// Refuse a token from now on.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user to an org; the password is read from standard input (one line).
    Add {
        #[arg(long)]
        org: String,
        #[arg(long)]
        email: String,
        /// admin: may change budgets, webhooks and users; viewer: reads only.
        #[arg(long, default_value = "admin")]
        role: users::Role,
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
            store,
            listen,
            retention_days,
            tls_cert,
            tls_key,
            plaintext_behind_mesh,
            sign_in,
            metrics,
            alerts,
            otlp,
        } => serve(
            store,
            listen,
            retention_days,
            tls_cert.zip(tls_key),
            plaintext_behind_mesh,
            &sign_in,
            &metrics,
            &alerts,
            &otlp,
        ),
        Command::Alert { command, store } => alert(command, &store),
        Command::Budget { command, store } => budget(command, &store),
        Command::User { command, store } => user(command, &store),
        Command::Org { command, store } => org(command, &store),
        Command::Token { command, store } => token(command, &store),
        Command::Prices { command, store } => prices(command, &store),
        Command::Reprice {
            org,
            from,
            to,
            store,
        } => reprice(&org, from.as_deref(), to.as_deref(), &store),
        Command::Export(args) => tally_collector::export::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-collector: {e}");
            ExitCode::FAILURE
        }
    }
}

fn org(command: OrgCommand, store: &StoreArgs) -> Result<(), String> {
    let store = store.open().map_err(|e| e.to_string())?;
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

fn org_id(store: &Store, name: &str) -> Result<i64, String> {
    store.org_id(name).map_err(|e| e.to_string())
}

fn budget(command: BudgetCommand, store: &StoreArgs) -> Result<(), String> {
    use tally_collector::budgets;
    let store = store.open().map_err(|e| e.to_string())?;
    let show = |s: &budgets::State| {
        println!(
            "{}\t{}\t{}\tlimit ${}\tspent ${:.6}\t{}\t{}\t{}",
            s.name,
            serde_json::to_string(&s.scope).unwrap_or_default(),
            s.period,
            s.limit_usd,
            s.spend_usd,
            s.state,
            s.action,
            tally::time::format_rfc3339_ms(s.period_end_ms)
        )
    };
    match command {
        BudgetCommand::Set {
            name,
            org,
            scope,
            period,
            limit_usd,
            warn_at,
            action,
        } => {
            let id = org_id(&store, &org)?;
            let mut fields = std::collections::BTreeMap::new();
            for s in scope {
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| format!("--scope {s:?}: expected FIELD=VALUE"))?;
                if fields
                    .insert(k.trim().to_string(), v.trim().to_string())
                    .is_some()
                {
                    return Err(format!("--scope: {k} is given twice"));
                }
            }
            let spec = budgets::BudgetSpec {
                name,
                scope: fields,
                period,
                limit_usd,
                warn_at,
                action,
            };
            let state = budgets::set(&mut store.conn_for_cli(), id, &spec, now_ms())
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{}: {}", e.field, e.message))?;
            show(&state);
        }
        BudgetCommand::List { org } => {
            let id = org_id(&store, &org)?;
            let list = store.budgets_of(id).map_err(|e| e.to_string())?;
            for s in budgets::states(&mut store.conn_for_cli(), &list, now_ms())
                .map_err(|e| e.to_string())?
            {
                show(&s);
            }
        }
        BudgetCommand::Delete { name, org } => {
            let id = org_id(&store, &org)?;
            if !budgets::delete(&mut store.conn_for_cli(), id, &name).map_err(|e| e.to_string())? {
                return Err(format!("org {org} has no budget {name:?}"));
            }
            eprintln!("Org {org}: budget {name} deleted.");
        }
        BudgetCommand::Rebuild { org } => {
            let id = org_id(&store, &org)?;
            for (name, period, spend) in
                budgets::rebuild_org(&store, id, now_ms()).map_err(|e| e.to_string())?
            {
                eprintln!("{name}: ${spend:.6} this {}", period.name());
            }
        }
    }
    Ok(())
}

fn prices(command: PricesCommand, store: &StoreArgs) -> Result<(), String> {
    use tally_collector::prices;
    let store = store.open().map_err(|e| e.to_string())?;
    match command {
        PricesCommand::Load { file } => {
            let json = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let source = file
                .file_name()
                .map_or("a file".into(), |n| n.to_string_lossy().into_owned());
            let n = prices::load_table(&mut store.conn_for_cli(), &json, &source, now_ms())
                .map_err(|e| format!("{}: {e}", file.display()))?;
            eprintln!("Prices: {source} ({n} models) is in force from now on.");
        }
        PricesCommand::Show => {
            let p = store.prices();
            println!("{}	{} models", p.source, p.table.len());
        }
        PricesCommand::SetRate {
            org,
            model,
            input,
            cached_input,
            cache_write,
            output,
            discount_percent,
        } => {
            let id = org_id(&store, &org)?;
            let rate = prices::OrgRate {
                model: model.clone(),
                input,
                cached_input,
                cache_write,
                output,
                discount_pct: discount_percent,
            };
            prices::set_rate(&mut store.conn_for_cli(), id, &rate)?;
            eprintln!(
                "Org {org}: rate for {model} set; new events use it, and `tally-collector \
                 reprice --org {org}` prices stored ones again."
            );
        }
        PricesCommand::Rates { org } => {
            let id = org_id(&store, &org)?;
            for r in prices::rates(&mut store.conn_for_cli(), id)? {
                let n = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
                println!(
                    "{}	input {}	cached_input {}	cache_write {}	output {}	discount {}%",
                    r.model,
                    n(r.input),
                    n(r.cached_input),
                    n(r.cache_write),
                    n(r.output),
                    n(r.discount_pct)
                );
            }
        }
        PricesCommand::DeleteRate { org, model } => {
            let id = org_id(&store, &org)?;
            if !prices::delete_rate(&mut store.conn_for_cli(), id, &model)? {
                return Err(format!("org {org} has no rate for {model}"));
            }
            eprintln!("Org {org}: rate for {model} removed.");
        }
    }
    Ok(())
}

fn reprice(
    org: &str,
    from: Option<&str>,
    to: Option<&str>,
    store: &StoreArgs,
) -> Result<(), String> {
    let time = |name: &str, v: Option<&str>| {
        v.map(|v| {
            tally::time::parse_rfc3339_ms(v)
                .ok_or_else(|| format!("--{name} must be an RFC 3339 date-time or a date"))
        })
        .transpose()
    };
    let (from, to) = (time("from", from)?, time("to", to)?);
    let store = store.open().map_err(|e| e.to_string())?;
    let r = store
        .reprice(org, from, to, now_ms())
        .map_err(|e| e.to_string())?;
    eprintln!(
        "Org {org}: {} events priced again, {} changed; their total went from ${:.6} to ${:.6}.",
        r.events, r.changed, r.before_usd, r.after_usd
    );
    if r.skipped > 0 {
        eprintln!(
            "{} events stored in the last second are not in the rollups yet and were left as \
             they are: run reprice again to price them.",
            r.skipped
        );
    }
    // Budgets count spend as priced at ingest: count their current periods again.
    let id = org_id(&store, org)?;
    for (name, period, spend) in
        tally_collector::budgets::rebuild_org(&store, id, now_ms()).map_err(|e| e.to_string())?
    {
        eprintln!(
            "Budget {name}: ${spend:.6} this {} after repricing.",
            period.name()
        );
    }
    Ok(())
}

fn token(command: TokenCommand, store: &StoreArgs) -> Result<(), String> {
    let store = store.open().map_err(|e| e.to_string())?;
    match command {
        TokenCommand::Create {
            name,
            orgs,
            all_orgs,
        } => {
            let token = store
                .create_token(&name, &orgs, all_orgs, now_ms())
                .map_err(|e| e.to_string())?;
            let scope = if all_orgs {
                "every org".to_string()
            } else {
                format!(
                    "org{} {}",
                    if orgs.len() > 1 { "s" } else { "" },
                    orgs.join(", ")
                )
            };
            eprintln!(
                "Created mesh token {name}, which may send events for {scope}. It is shown once, \
                 below; store it as a secret."
            );
            println!("{token}");
        }
        TokenCommand::Revoke { name } => {
            store
                .revoke_token(&name, now_ms())
                .map_err(|e| e.to_string())?;
            eprintln!("Token {name} revoked: it is refused from now on.");
        }
        TokenCommand::List => {
            for t in store.list_tokens().map_err(|e| e.to_string())? {
                let orgs = t.orgs.map_or("all orgs".to_string(), |o| o.join(","));
                let revoked = t.revoked_ms.map_or(String::new(), |r| {
                    format!("\trevoked {}", tally::time::format_rfc3339_ms(r))
                });
                println!(
                    "{}\t{orgs}\tcreated {}{revoked}",
                    t.name,
                    tally::time::format_rfc3339_ms(t.created_ms)
                );
            }
        }
    }
    Ok(())
}

fn user(command: UserCommand, store: &StoreArgs) -> Result<(), String> {
    let store = store.open().map_err(|e| e.to_string())?;
    match command {
        UserCommand::Add { org, email, role } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| format!("reading the password from standard input: {e}"))?;
            let password = password.trim_end_matches(['\r', '\n']);
            store
                .add_user(&org, &email, password, role, now_ms())
                .map_err(|e| e.to_string())?;
            eprintln!("User {email} added to org {org} as {}.", role.as_str());
        }
    }
    Ok(())
}

fn alert(command: AlertCommand, store: &StoreArgs) -> Result<(), String> {
    let store = store.open().map_err(|e| e.to_string())?;
    match command {
        AlertCommand::Add {
            name,
            org,
            url,
            kinds,
            allow_private,
        } => {
            let id = org_id(&store, &org)?;
            let secret = alerts::add_hook(
                &mut store.conn_for_cli(),
                id,
                &name,
                &url,
                kinds.as_deref(),
                allow_private,
                &alerts::Policy::default(),
                now_ms(),
            )
            .map_err(|e| e.to_string())?;
            eprintln!(
                "Added alert hook {name} to org {org}. Its signing secret is shown once, below; \
                 the receiver checks X-Tally-Signature with it (README, \"Alerts\")."
            );
            println!("{secret}");
        }
        AlertCommand::List { org } => {
            let id = org_id(&store, &org)?;
            for h in alerts::list_hooks(&mut store.conn_for_cli(), id).map_err(|e| e.to_string())? {
                println!(
                    "{}\t{}\t{}\tcreated {}{}",
                    h.name,
                    h.url,
                    h.kinds.map_or("all kinds".to_string(), |k| k.join(",")),
                    tally::time::format_rfc3339_ms(h.created_ms),
                    if h.allow_private {
                        "\tallow-private"
                    } else {
                        ""
                    }
                );
            }
        }
        AlertCommand::Delete { name, org } => {
            let id = org_id(&store, &org)?;
            if !alerts::delete_hook(&mut store.conn_for_cli(), id, &name)
                .map_err(|e| e.to_string())?
            {
                return Err(format!("org {org} has no alert hook {name}"));
            }
            eprintln!("Alert hook {name} of org {org} deleted.");
        }
        AlertCommand::History { org, limit } => {
            let id = org_id(&store, &org)?;
            let history = alerts::history(&mut store.conn_for_cli(), id, &org, limit.clamp(1, 500))
                .map_err(|e| e.to_string())?;
            for a in history {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
                println!("{}\t{}\t{}", s(&a["at"]), s(&a["kind"]), s(&a["text"]));
                for d in a["deliveries"].as_array().into_iter().flatten() {
                    println!(
                        "\t{} attempt {}: {}{}{}",
                        s(&d["hook"]),
                        d["attempt"],
                        s(&d["outcome"]),
                        d["status"]
                            .as_i64()
                            .map_or(String::new(), |c| format!(" (HTTP {c})")),
                        d["error"]
                            .as_str()
                            .map_or(String::new(), |e| format!(": {e}"))
                    );
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn serve(
    store_args: StoreArgs,
    listen: SocketAddr,
    retention_days: Option<u32>,
    tls: Option<(PathBuf, PathBuf)>,
    plaintext_behind_mesh: bool,
    sign_in: &oidc::Args,
    metrics: &api::MetricsArgs,
    alert_args: &AlertArgs,
    otlp: &tally_collector::otlp::Args,
) -> Result<(), String> {
    let otlp = tally_collector::otlp::Exporter::new(otlp)?;
    if let Some(o) = &otlp {
        o.start()?;
    }
    // The secret is read from the environment here and nowhere else, never from the command
    // line (which `ps` shows).
    let sso_config = oidc::Config::from_args(
        sign_in,
        std::env::var(oidc::SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty()),
    )
    .map_err(|e| format!("sign-in: {e}"))?;
    if tls.is_none() && !listen.ip().is_loopback() {
        if !plaintext_behind_mesh {
            return Err(format!(
                "refusing to serve plain HTTP on {listen}: org keys, passwords and session \
                 cookies would cross the network in clear. Give --tls-cert and --tls-key, listen \
                 on a loopback address (127.0.0.1), or, behind a mesh sidecar that terminates \
                 mTLS or on a private container network, --plaintext-behind-mesh"
            ));
        }
        // Said once at start, so that whoever reads the log knows what this collector trusts.
        log::info(&format!(
            "--plaintext-behind-mesh: serving plain HTTP on {listen}, trusting what sits in front \
             (a mesh sidecar terminating mTLS, or a private container network) to authenticate \
             and encrypt every connection; anything that reaches this port directly talks to it \
             in clear, org keys included, so let only the sidecar or that network reach it"
        ));
    }
    let store = Arc::new(store_args.open_serving().map_err(|e| e.to_string())?);
    let data_in = store.database().describe();
    if !store.replica().is_empty() {
        log::info(&format!("replica {:?} on {data_in}", store.replica()));
    }
    let sign_in = sign_in_config(&store, sso_config, !sign_in.no_local_login)?;
    let counted = store.recount_rollups().map_err(|e| e.to_string())?;
    if counted > 0 {
        log::info(&format!(
            "rollups: counted {counted} events stored after the last rollup write"
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let controls = tally_collector::controls::Controls::start(&store).map_err(|e| e.to_string())?;
    let metrics_access = metrics.access()?;
    alerts::start(
        &store,
        alerts::Config {
            policy: alerts::Policy {
                allow_private: alert_args.alert_allow_private,
                allow_hosts: alert_args.alert_allow_hosts.clone(),
            },
            retry_base_ms: alert_args.alert_retry_base_ms.max(1),
            detect_every: std::time::Duration::from_millis(
                alert_args.alert_detect_every_ms.max(100),
            ),
            ..Default::default()
        },
    )?;
    let state = api::AppState {
        metrics_access,
        store: store.clone(),
        metrics: Default::default(),
        controls,
        tls: tls.is_some(),
        sign_in: sign_in.clone(),
        pollers: Default::default(),
        otlp,
    };
    let at_exit = store.clone();
    let served = runtime.block_on(async move {
        if let Some((cert, key)) = tls {
            return serve_tls(listen, &cert, &key, state, &data_in).await;
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        if store.backend() == tally_collector::db::Backend::Postgres {
            let store = store.clone();
            tokio::spawn(async move {
                // Every second, this replica's waiting rollup rows, so that the others read
                // them within a second even when no traffic or read comes here; every 5 s,
                // stopped replicas' events after their last rollup write (counted by
                // whichever replica gets to them first), and the event partitions of today and
                // tomorrow made ahead of the events.
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                for n in 0u64.. {
                    tick.tick().await;
                    let s = store.clone();
                    let done = tokio::task::spawn_blocking(move || {
                        s.write_rollups()?;
                        if n % 5 == 0 {
                            s.housekeeping(now_ms())?;
                        }
                        Ok::<_, store::StoreError>(())
                    })
                    .await;
                    if let Ok(Err(e)) = done {
                        log::error(&format!("replicas: {e}"));
                    }
                }
            });
        }
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
        start_sso(&sign_in, "http", bound).await?;
        log::info(&format!(
            "tally-collector listening on http://{bound} (data in {data_in})"
        ));
        axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server: {e}"))?;
        Ok(())
    });
    // Rollup rows still waiting: written now rather than counted again at the next start.
    if let Err(e) = at_exit.write_rollups() {
        log::error(&format!("writing rollups at exit: {e}"));
    }
    if served.is_ok() {
        log::info("tally-collector stopped");
    }
    served
}

async fn serve_tls(
    listen: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    state: api::AppState,
    data_in: &str,
) -> Result<(), String> {
    // rustls with the ring provider (no C toolchain beyond cc needed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            format!(
                "TLS: cannot use {} and {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    let state_sign_in = state.sign_in.clone();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    let server = axum_server::bind_rustls(listen, config).handle(handle.clone());
    let serving =
        tokio::spawn(server.serve(
            api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        ));
    match handle.listening().await {
        Some(bound) => {
            start_sso(&state_sign_in, "https", bound).await?;
            log::info(&format!(
                "tally-collector listening on https://{bound} (data in {data_in})"
            ))
        }
        None => {
            return Err(match serving.await {
                Ok(Err(e)) => format!("cannot listen on {listen}: {e}"),
                _ => format!("cannot listen on {listen}"),
            })
        }
    }
    serving
        .await
        .map_err(|e| format!("server: {e}"))?
        .map_err(|e| format!("server: {e}"))?;
    Ok(())
}

/// Sign-in as configured: an org named by `--oidc-org-domain` or `--oidc-org-claim-value` must
/// exist.
fn sign_in_config(
    store: &Store,
    sso: Option<oidc::Config>,
    local: bool,
) -> Result<Arc<web::SignIn>, String> {
    let Some(config) = sso else {
        return Ok(Arc::new(web::SignIn { local, sso: None }));
    };
    let orgs: Vec<String> = store
        .list_orgs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    for (domain, org) in &config.org_domains {
        if !orgs.contains(org) {
            return Err(format!(
                "sign-in: --oidc-org-domain {domain}={org}: there is no org {org} (create it \
                 with `tally-collector org create {org}`)"
            ));
        }
    }
    for (value, org) in config.org_claim.iter().flat_map(|(_, values)| values) {
        if !orgs.contains(org) {
            return Err(format!(
                "sign-in: --oidc-org-claim-value {value}={org}: there is no org {org} (create it \
                 with `tally-collector org create {org}`)"
            ));
        }
    }
    let sso = oidc::Sso::new(config).map_err(|e| format!("sign-in: {e}"))?;
    Ok(Arc::new(web::SignIn {
        local,
        sso: Some(Arc::new(sso)),
    }))
}

/// Once the address is known: the default redirect URL, and a first read of the provider's
/// discovery document and keys (in the background: the provider may be down, ingest is not).
async fn start_sso(sign_in: &web::SignIn, scheme: &str, bound: SocketAddr) -> Result<(), String> {
    let Some(sso) = sign_in.sso.clone() else {
        return Ok(());
    };
    sso.default_redirect(scheme, bound)?;
    if !sign_in.local {
        log::info("sign-in: passwords are turned off (--no-local-login); SSO only");
    }
    tokio::spawn(async move { sso.warm_up().await });
    Ok(())
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
