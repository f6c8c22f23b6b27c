//! The state every request handler and call thread shares: the configuration, when the process
//! started, and the live-call registry.

use std::sync::Arc;
use std::time::Instant;

use crate::calls::CallRegistry;
use crate::config::Config;

pub struct App {
    pub config: Config,
    pub started_at: Instant,
    pub calls: Arc<CallRegistry>,
}

impl App {
    pub fn new(config: Config) -> App {
        App {
            config,
            started_at: Instant::now(),
            calls: Arc::new(CallRegistry::default()),
        }
    }
}
