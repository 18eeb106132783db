//! The `convene` command line: `serve` (the default), `migrate`, `load`, `token create`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use convene::config::{Config, ConfigOverrides, LogFormat};
use convene::domain::token::{Grants, JoinClaims, TokenKeys};

#[derive(Parser)]
#[command(
    name = "convene",
    version,
    about = "WebRTC SFU with signaling, meetings and auth built in"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (what runs with no subcommand).
    Serve,
    /// Create or upgrade the database schema, then exit (the server also does this on start).
    Migrate,
    /// Load-test a WHIP/WHEP server (this one or another): publishers send synthetic video
    /// and audio, subscribers count every packet; prints delivery, loss, jitter, join time and,
    /// with --server-pid, the server's CPU per packet and memory per subscriber.
    Load(LoadArgs),
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed join token on the last line of stdout.
    Create(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    room: String,
    #[arg(long)]
    identity: String,
    /// Grant publishing (WHIP). With neither --publish nor --subscribe, both are granted.
    #[arg(long)]
    publish: bool,
    /// Grant subscribing (WHEP).
    #[arg(long)]
    subscribe: bool,
    /// Display name carried in the token.
    #[arg(long)]
    name: Option<String>,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(Args)]
struct LoadArgs {
    /// The server's base URL: WHIP is POSTed to {url}/whip/{room}, WHEP to {url}/whep/{room}.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Base URLs subscribers go to, in turn, comma-separated (other nodes of a cascading
    /// cluster) [default: --url].
    #[arg(long, value_delimiter = ',')]
    subscriber_url: Vec<String>,
    #[arg(long, default_value = "load")]
    room: String,
    /// A bearer token for every session. Without it, tokens are minted per session with the
    /// signing key of --data-dir (a local Convene server's).
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    #[arg(long, default_value_t = 2500)]
    video_kbps: u32,
    /// The measured window, after every subscriber joined and a warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Subscribers started per second.
    #[arg(long, default_value_t = 50.0)]
    join_rate: f64,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The server's process id (same machine): CPU per forwarded packet and RSS per subscriber.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Threads driving the load peers [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct CommonArgs {
    /// Config file (default: ./convene.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// HTTP listen address [default: 0.0.0.0:8080].
    #[arg(long, global = true)]
    http: Option<SocketAddr>,
    /// The one UDP port for all media [default: 50000].
    #[arg(long, global = true)]
    media_udp_port: Option<u16>,
    /// Address(es) announced in ICE candidates (NAT 1:1), comma-separated [default: host addresses].
    #[arg(long, global = true, value_delimiter = ',')]
    public_ip: Option<Vec<IpAddr>>,
    /// Data directory (signing key, database, recordings) [default: ./data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

impl CommonArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let overrides = ConfigOverrides {
            http: self.http,
            media_udp_port: self.media_udp_port,
            public_ip: self.public_ip.clone(),
            data_dir: self.data_dir.clone(),
            log_format: self.log_format,
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.common.load()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Migrate => migrate(config),
        Command::Load(args) => load(&config, args),
        Command::Token {
            command: TokenCommand::Create(args),
        } => create_token(&config, args),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    convene::telemetry::init(config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(convene::run(config, shutdown_signal()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

fn migrate(config: Config) -> anyhow::Result<()> {
    convene::telemetry::init(config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = convene::store::Store::connect(&config.database_url, &config.data_dir).await?;
        println!("database schema is up to date ({:?})", store.backend);
        anyhow::Ok(())
    })
}

fn load(config: &Config, args: LoadArgs) -> anyhow::Result<()> {
    use convene::load::{LoadOptions, Tokens};
    // A UDP socket per peer: hundreds of subscribers pass the usual 1024 descriptors.
    convene::http_server::raise_descriptor_limit();
    let tokens = match args.token {
        Some(token) => Tokens::Given(token),
        None => {
            let key = config.signing_key_path();
            if config.jwt_secret.is_empty() && !key.exists() {
                eprintln!(
                    "convene load: no --token, and no signing key at {} to mint tokens with (pass --data-dir of the server)",
                    key.display()
                );
                std::process::exit(2);
            }
            Tokens::Minted(Box::new(TokenKeys::load_or_create(
                &config.jwt_secret,
                &key,
            )?))
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    let options = LoadOptions {
        url: args.url,
        subscriber_urls: args.subscriber_url,
        room: args.room,
        tokens,
        publishers: args.publishers,
        subscribers: args.subscribers,
        video_kbps: args.video_kbps,
        seconds: args.seconds,
        join_rate: args.join_rate,
        warmup: args.warmup,
        server_pid: args.server_pid,
        progress: true,
    };
    match runtime.block_on(convene::load::run(options)) {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            // A run that delivered nothing is a failure a script should see.
            if report.subscribers > 0 && report.subscribers_connected == 0 {
                eprintln!("convene load: no subscriber connected");
                std::process::exit(1);
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("convene load: {e}");
            std::process::exit(1);
        }
    }
}

fn create_token(config: &Config, args: TokenArgs) -> anyhow::Result<()> {
    let keys = TokenKeys::load_or_create(&config.jwt_secret, &config.signing_key_path())?;
    let both = !args.publish && !args.subscribe;
    let grants = Grants {
        publish: args.publish || both,
        subscribe: args.subscribe || both,
        ..Default::default()
    };
    let mut claims = JoinClaims::new(&args.room, &args.identity, grants, args.ttl);
    claims.name = args.name;
    println!("{}", keys.sign(&claims));
    Ok(())
}
