//! The `chunkd` binary: parse flags, open the data directory, listen, serve until a signal.

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;

use chunkd::config::{Command, TokenArgs};
use chunkd::{App, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => return token(args),
        Some(Command::Verify(args)) => return chunkd::verify::run(&args),
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHUNKD_LOG")
                .unwrap_or_else(|_| "chunkd=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        let app = match App::open(cli.config) {
            Ok(app) => app,
            Err(e) => {
                eprintln!("chunkd: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listen = app.config.net.listen;
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("chunkd: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        println!("chunkd listening on http://{addr}");
        chunkd::serve(app, listener, shutdown).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: called before the "listening" line is printed, a signal sent right
/// after that line is a graceful stop, never the default instant death.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
}

/// `chunkd token`: prints a token signed with the server's secret.
fn token(args: TokenArgs) -> ExitCode {
    let key = match chunkd::app::load_jwt(&args.secret, &args.data) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("chunkd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = chunkd::auth::Claims {
        sub: args.sub,
        exp: now + args.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        companies: args.companies,
        application_id: args.application,
    };
    println!("{}", key.mint(&claims));
    ExitCode::SUCCESS
}
