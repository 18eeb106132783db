//! The `convene` command line: `serve` (the default), `token create`.

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
