//! The commands that are not the server: `demo`, `bench` (concurrent simulated calls),
//! `bench-records` (the records store at a million calls) and `generate-audio` (pre-rendered
//! phrases). `cli` dispatches to them; nothing on the serving path imports them.

pub mod bench;
pub mod bench_records;
pub mod demo;
pub mod generate_audio;

use std::error::Error;

use crate::config::{Config, Env};
use crate::logging;
use crate::serve::Server;
use crate::sim::Simulators;

/// The real server on loopback ports, wired to `sims`, with records in `records_dir` and
/// `extra` settings (for `demo` and `bench`).
pub fn start_on_loopback(
    sims: &Simulators,
    records_dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Result<Server, Box<dyn Error>> {
    let mut pairs: Vec<(String, String)> = vec![
        ("SERVER_DOMAIN".into(), "demo.localhost".into()),
        ("BIND_ADDR".into(), "127.0.0.1".into()),
        ("HTTP_PORT".into(), "0".into()),
        ("MEDIA_PORT".into(), "0".into()),
        ("RECORDS_DIR".into(), records_dir.display().to_string()),
    ];
    pairs.extend(sims.env().into_iter().map(|(k, v)| (k.to_string(), v)));
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let config = Config::from_env(&env).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        list.join("; ")
    })?;
    logging::init(&config.log);
    Ok(Server::start(config)?)
}
