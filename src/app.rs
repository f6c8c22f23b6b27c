//! The state every request handler and call thread shares: the configuration, when the process
//! started, the live-call registry, the call records and the API rate limiter.

use std::sync::Arc;
use std::time::Instant;

use crate::call::Setup;
use crate::calls::CallRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbound::idempotency::{FileIdempotencyStore, IdempotencyStore};
use crate::rate_limit::{InMemoryRateLimiter, RateLimiter};
use crate::records::writer::{RecordWriter, QUEUE_LINES};
use crate::records::RecordStore;
use crate::twilio::stream_token::StreamTokens;

pub struct App {
    pub config: Config,
    pub started_at: Instant,
    pub calls: Arc<CallRegistry>,
    pub records: Arc<RecordStore>,
    /// The calls' record lines, written off their threads (`records-writer`).
    pub record_writer: RecordWriter,
    pub rate_limiter: Box<dyn RateLimiter>,
    /// The providers calls use (clients, settings, pre-rendered clips).
    pub voice: Setup,
    pub metrics: Metrics,
    /// Outbound `Idempotency-Key` answers, kept next to the records (`None` if the file could
    /// not be opened: keyed requests then get 503, never a second dial).
    pub idempotency: Option<Box<dyn IdempotencyStore>>,
    /// The per-call tokens the TwiML hands out and the media stream must bring back.
    pub stream_tokens: StreamTokens,
    /// `POST /call/outbound` requests being handled (they may hold at most half the workers).
    pub outbound_in_flight: std::sync::atomic::AtomicUsize,
    /// Set when the drain starts: new calls are answered 503, so Twilio uses the number's
    /// fallback URL instead of connecting a call no stream will take.
    pub draining: std::sync::atomic::AtomicBool,
    /// The HTTP tier's connection counters (`/metrics`: `cotrackpro_http_*`).
    pub http_counters: Arc<crate::metrics::HttpCounters>,
    /// The accept loops' beats, which the systemd watchdog reads.
    pub liveness: crate::watchdog::Liveness,
}

impl App {
    pub fn new(config: Config, records: Arc<RecordStore>) -> App {
        let idempotency = open_idempotency(records.dir());
        App {
            started_at: Instant::now(),
            calls: Arc::new(CallRegistry::default()),
            record_writer: RecordWriter::start(records.clone(), QUEUE_LINES),
            records,
            rate_limiter: Box::new(InMemoryRateLimiter::default()),
            voice: Setup::from_config(&config),
            metrics: Metrics::default(),
            idempotency,
            stream_tokens: StreamTokens::random(),
            outbound_in_flight: std::sync::atomic::AtomicUsize::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            http_counters: Arc::default(),
            liveness: crate::watchdog::Liveness::default(),
            config,
        }
    }
}

fn open_idempotency(dir: &std::path::Path) -> Option<Box<dyn IdempotencyStore>> {
    match FileIdempotencyStore::open(dir, crate::timestamp::now_ms()) {
        Ok(store) => Some(Box::new(store)),
        Err(err) => {
            log::error!(dir:% = dir.display(), error:% = err; "idempotency store unavailable: keyed outbound requests will get 503");
            None
        }
    }
}
