//! `ringproxy [--config PATH] [--check | --print-config] [--log-level LEVEL]`: loads the config, starts the
//! reactor, exits 0 after a clean drain, 1 on a bad config or a fatal error, 2 on bad usage.
//! `ringproxy --probe URL` is a health check for images without a shell: 0 when URL answers
//! 2xx, 1 otherwise.

use log::{error, info, warn, LevelFilter};
use ringproxy::config::Config;
use ringproxy::observe::oplog;
use ringproxy::server::Server;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `println!` and `eprintln!` without their panic when the stream is closed or full: a
/// command-line answer that cannot be written must not abort the process.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod healthcheck;

const USAGE: &str = "\
ringproxy: a load-balancing HTTP/1.1 reverse proxy

Usage: ringproxy [--config PATH] [--check | --print-config] [--log-level LEVEL]
       ringproxy --probe URL

Options:
  -c, --config PATH      config file (default: config/appsettings.json)
  -t, --check            validate the config and exit: 0 if valid, 1 if not
  -T, --print-config     print the effective config (every key, after defaults) as JSON
                         and exit: 0 if valid, 1 if not
  -l, --log-level LEVEL  error, warn, info, debug or trace (default: info, or RUST_LOG)
      --probe URL        GET http://HOST:PORT/PATH and exit 0 on a 2xx answer within
                         2 s, 1 otherwise (a healthcheck for the FROM scratch image)
  -h, --help             print this help
  -V, --version          print the version

Admin endpoints (\"admin\" in the config, default 127.0.0.1:9000): /metrics,
/status, /status.json, /livez, /readyz.

Signals: SIGTERM, SIGINT or SIGQUIT stops accepting, lets requests in flight
finish (up to shutdown_timeout) and exits 0; a second one exits at once.
SIGHUP reloads the config file (an invalid one keeps the running config).
SIGUSR1 reopens the access log file. SIGUSR2 is logged and ignored.";

struct Args {
    config: PathBuf,
    check: bool,
    print_config: bool,
    log_level: Option<LevelFilter>,
}

enum Parsed {
    Run(Args),
    Exit(ExitCode),
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut args =
        Args { config: PathBuf::from("config/appsettings.json"), check: false, print_config: false, log_level: None };
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "-c" | "--config" => args.config = argv.next().ok_or("--config needs a path")?.into(),
            "-t" | "--check" => args.check = true,
            "-T" | "--print-config" => args.print_config = true,
            "-l" | "--log-level" => {
                let level = argv.next().ok_or("--log-level needs a level")?;
                args.log_level = Some(level.parse().map_err(|_| format!("unknown log level {level:?}"))?);
            }
            "-h" | "--help" => {
                say!("{USAGE}");
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            "--probe" => {
                let url = argv.next().ok_or("--probe needs a URL")?;
                return Ok(Parsed::Exit(healthcheck::run(&url)));
            }
            "-V" | "--version" => {
                say!("ringproxy {}", env!("CARGO_PKG_VERSION"));
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Parsed::Run(args))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Exit(code)) => return code,
        Err(e) => {
            say_err!("ringproxy: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            say_err!("ringproxy: {}: {e}", args.config.display());
            return ExitCode::from(1);
        }
    };
    if let Some(Err(e)) = config.tls.as_ref().map(ringproxy::tls::load) {
        say_err!("ringproxy: {}: {e}", args.config.display());
        return ExitCode::from(1);
    }
    if args.print_config {
        for warning in &config.warnings {
            say_err!("ringproxy: {}: {warning}", args.config.display());
        }
        say!("{}", config.effective_text());
        return ExitCode::SUCCESS;
    }
    if args.check {
        for warning in &config.warnings {
            say!("ringproxy: {}: {warning}", args.config.display());
        }
        let targets = oplog::count(config.targets.len(), "target", "targets");
        say!("ringproxy: {}: ok ({targets})", args.config.display());
        return ExitCode::SUCCESS;
    }
    // --log-level, else RUST_LOG when it names a level, else info.
    let env_level = std::env::var("RUST_LOG").ok().and_then(|v| v.trim().parse().ok());
    if let Err(e) = oplog::init(args.log_level.or(env_level).unwrap_or(LevelFilter::Info)) {
        say_err!("ringproxy: cannot start logging: {e}");
        return ExitCode::from(1);
    }
    let code = run(&args, &config);
    // The last lines (a drain's, a fatal error's) go out before the process does.
    oplog::flush(Duration::from_secs(1));
    code
}

/// Starts the loops and runs them until a drain completes or the loop fails.
fn run(args: &Args, config: &Config) -> ExitCode {
    for warning in &config.warnings {
        warn!("{}: {warning}", args.config.display());
    }
    let mut server = match Server::new(config) {
        Ok(server) => server,
        Err(e) => {
            error!("cannot start on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    server.reload_from(args.config.clone());
    let urls: Vec<&str> = config.targets.iter().map(|t| t.url.as_str()).collect();
    info!(
        "ringproxy {} listening on {}; {}: {}; probing dropped targets every {:?}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        oplog::count(urls.len(), "target", "targets"),
        urls.join(" "),
        config.health.sleeping
    );
    if config.workers > 1 {
        info!("{} workers, each with its own event loop and listener (SO_REUSEPORT)", config.workers);
    }
    if let Some(addr) = server.tls_addr() {
        info!("TLS listening on {addr} (TLS 1.2 and 1.3, ALPN http/1.1)");
    }
    match server.admin_addr() {
        Some(addr) => info!("admin endpoints on {addr}: /metrics /status /livez /readyz"),
        None => info!("admin endpoints off"),
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("event loop failed: {e}");
            ExitCode::from(1)
        }
    }
}
