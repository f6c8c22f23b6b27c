//! The commands that are not the server: `demo`, `call` (a running server dialed as Twilio
//! would), `bench` (concurrent simulated calls against
//! the server in its own process), `bench-records` (the records store at a million calls) and
//! `generate-audio` (pre-rendered phrases). `cli` dispatches to them; nothing on the serving
//! path imports them.

pub mod bench;
pub mod bench_records;
pub mod call;
pub mod demo;
pub mod generate_audio;

use std::error::Error;

use crate::config::{Config, Env};
use crate::logging;
use crate::serve::Server;
use crate::sim::Simulators;

/// The settings that point the real server at `sims` on loopback ports (0: the system picks),
/// with records in `records_dir` and `extra` settings on top: what `demo` starts in-process
/// and `bench` hands to its `serve` child.
pub fn loopback_env(
    sims: &Simulators,
    records_dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = vec![
        ("SERVER_DOMAIN".into(), "demo.localhost".into()),
        ("BIND_ADDR".into(), "127.0.0.1".into()),
        ("HTTP_PORT".into(), "0".into()),
        ("MEDIA_PORT".into(), "0".into()),
        ("RECORDS_DIR".into(), records_dir.display().to_string()),
    ];
    pairs.extend(sims.env().into_iter().map(|(k, v)| (k.to_string(), v)));
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    pairs
}

/// The configuration `pairs` describe, or every error in it as one message.
pub fn config_from_pairs(pairs: &[(String, String)]) -> Result<Config, Box<dyn Error>> {
    let env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Ok(Config::from_env(&env).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        list.join("; ")
    })?)
}

/// The real server on loopback ports, in this process, wired to `sims`, with records in
/// `records_dir` and `extra` settings (for `demo`).
pub fn start_on_loopback(
    sims: &Simulators,
    records_dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Result<Server, Box<dyn Error>> {
    let config = config_from_pairs(&loopback_env(sims, records_dir, extra))?;
    logging::init(&config.log);
    Ok(Server::start(config)?)
}
