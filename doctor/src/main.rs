//! `forze-doctor`: checks what forze-redis needs of a Redis or Valkey deployment (single
//! server, cluster or sentinel; TLS included) and prints one verdict per check, with the
//! reason and the fix.
//!
//! ```text
//! forze-doctor [--json] [--timeout 2s] [--ca-file F] [--server-name N]
//!              [--cert-file F --key-file F] <url>
//! ```
//!
//! Without `<url>`, the URL is read from `REDIS_URL`, which keeps a password out of the
//! process list.
//!
//! Exit status: 0 when no check fails (warnings allowed), 1 when one fails, 2 for a usage
//! error. `--json` prints one JSON document instead of the table.

mod checks;
mod frames;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use forze_redis::config::RedisConfig;
use forze_redis::TlsConfig;

use checks::Status;

const USAGE: &str = "usage: forze-doctor [--json] [--timeout 2s] [--ca-file F] [--server-name N] \
                     [--cert-file F --key-file F] <redis-url>  (or the URL in REDIS_URL)";

struct Args {
    url: String,
    json: bool,
    timeout: Duration,
    tls: Option<TlsConfig>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut url, mut json, mut timeout) = (None, false, Duration::from_secs(2));
    let mut tls: Option<TlsConfig> = None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--json" => json = true,
            "--timeout" => {
                timeout = humantime::parse_duration(&value("--timeout")?)
                    .map_err(|e| format!("--timeout: {e}"))?
            }
            "--ca-file" => {
                tls.get_or_insert_with(Default::default).ca_file = Some(PathBuf::from(value(&a)?))
            }
            "--server-name" => {
                tls.get_or_insert_with(Default::default).server_name = Some(value(&a)?)
            }
            "--cert-file" => {
                tls.get_or_insert_with(Default::default).cert_file = Some(PathBuf::from(value(&a)?))
            }
            "--key-file" => {
                tls.get_or_insert_with(Default::default).key_file = Some(PathBuf::from(value(&a)?))
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
            _ if url.is_some() => return Err(format!("one URL only\n{USAGE}")),
            _ => url = Some(a),
        }
    }
    if timeout.is_zero() {
        return Err(format!("--timeout must be greater than zero\n{USAGE}"));
    }
    // From the environment, the URL (and its password) stays out of the process list.
    let url = url
        .or_else(|| std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| USAGE.to_string())?;
    Ok(Args {
        url,
        json,
        timeout,
        tls,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut config = RedisConfig::new(args.url.clone());
    config.connect_timeout = args.timeout;
    config.command_timeout = args.timeout;
    config.pool_size = 1;
    config.tls = args.tls;
    config.client_name = "forze-doctor".into();
    let shown = config.url.redacted();
    // Building the connection validates the URL and the TLS settings (a `connect` failure).
    let verdicts = checks::run(&config, args.timeout).await;
    let failed = verdicts.iter().any(|v| v.status == Status::Fail);
    if args.json {
        let doc = serde_json::json!({ "url": shown, "ok": !failed, "checks": verdicts });
        println!("{doc}");
    } else {
        println!("forze-doctor: {shown}");
        for v in &verdicts {
            println!("{:<5} {:<22} {}", v.status.label(), v.check, v.reason);
            if let Some(fix) = &v.fix {
                println!("{:<28} fix: {fix}", "");
            }
        }
        let (fails, warns) = (
            verdicts.iter().filter(|v| v.status == Status::Fail).count(),
            verdicts.iter().filter(|v| v.status == Status::Warn).count(),
        );
        println!(
            "{fails} failed, {warns} warnings, {} checks",
            verdicts.len()
        );
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
