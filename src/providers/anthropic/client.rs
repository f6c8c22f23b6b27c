//! The streaming Messages client: `POST {ANTHROPIC_BASE_URL}/v1/messages` over ureq, the answer
//! read as server-sent events and assembled as it arrives.
//!
//! - **Retries** only before the first words, as the official SDK decides them ([`super::retry`]):
//!   `x-should-retry` first, else 408, 409, 429 and 5xx; a connection that fails; and an `error`
//!   event that arrives before any words. The wait honours `retry-after-ms` / `retry-after`
//!   (seconds or an HTTP date) within (0, 60] s, else exponential backoff with jitter, and is
//!   slept on the turn's [`Cancel`]. Once words have been spoken to the caller, a failure is
//!   returned, never replayed.
//! - **Timeouts**: no words within `first_token_timeout` (from sending the request) is an error;
//!   once words came, a silence longer than `stall_timeout` is an error (a stalled stream);
//!   `stream_timeout` caps the whole response. ureq's per-read timeout is fixed per agent, so it
//!   is set to a tick that divides both (see [`read_tick`]) and [`Paced`] decides, at each tick,
//!   which of the two deadlines applies; a read that timed out at a tick is resumed, which ureq
//!   allows (nothing was consumed).
//! - **Cancellation** (barge-in): the flag is checked between events and between retries; the
//!   connection is dropped, which closes it.
//! - **One agent for the server**: every call streams through one ureq agent (one pool of
//!   connections, buffers sized by [`crate::resolve::provider_agent`]); each call has its own
//!   [`AnthropicClient::handle`], whose [`shutdown`](AnthropicClient::shutdown) cuts that call's
//!   request in flight — and only it — through its [`RequestScope`].

use crate::providers::cancel::Cancel;
use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::retry;
use super::stream::{Assembler, StreamItem, Usage};
use super::Block;
use crate::config::{AnthropicConfig, Secret};
use crate::http_client::RequestScope;
use crate::metrics::EVENTS;
use crate::providers::sse::{SseError, SseReader};

/// The API version this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Longest SSE line accepted (a text delta is a few hundred bytes).
const MAX_SSE_LINE: usize = 1 << 20;

/// Largest error body read from a failed request.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Why a response could not be had. `Display` is for the operator's log.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmError {
    /// The API answered with an error status (after any retries).
    Http {
        status: u16,
        kind: String,
        message: String,
    },
    /// An `error` event inside the stream (e.g. `overloaded_error`) after words were spoken,
    /// or on the last attempt.
    Stream { kind: String, message: String },
    /// No words within the first-token timeout.
    FirstTokenTimeout(Duration),
    /// The stream went quiet, or the whole response took too long.
    Timeout(String),
    /// The connection failed (after any retries).
    Transport(String),
    /// The stream was not what the API sends.
    Malformed(String),
}

impl std::fmt::Display for LlmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LlmError::Http {
                status,
                kind,
                message,
            } => write!(f, "anthropic answered {status} {kind}: {message}"),
            LlmError::Stream { kind, message } => {
                write!(f, "anthropic stream failed with {kind}: {message}")
            }
            LlmError::FirstTokenTimeout(after) => {
                write!(f, "anthropic sent no words within {} ms", after.as_millis())
            }
            LlmError::Timeout(what) => write!(f, "anthropic stream timed out: {what}"),
            LlmError::Transport(what) => write!(f, "cannot reach anthropic: {what}"),
            LlmError::Malformed(what) => write!(f, "anthropic stream not understood: {what}"),
        }
    }
}

impl std::error::Error for LlmError {}

impl LlmError {
    /// The `kind` label of this failure in `/metrics`.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            LlmError::Http { .. } => "http",
            LlmError::Stream { .. } => "stream",
            LlmError::FirstTokenTimeout(_) => "first_token_timeout",
            LlmError::Timeout(_) => "timeout",
            LlmError::Transport(_) => "transport",
            LlmError::Malformed(_) => "malformed",
        }
    }
}

/// How a response ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub usage: Usage,
    /// `end_turn`, `tool_use`, `max_tokens`, …; `None` when cancelled.
    pub stop_reason: Option<String>,
    /// What the assistant said, text and tool uses, for the history.
    pub content: Vec<Block>,
    /// Stopped by the cancel flag (barge-in) before the end.
    pub cancelled: bool,
    /// HTTP attempts made (1 without retries).
    pub attempts: u32,
}

/// Idle connections the server's agent keeps to the API for the next turn (of any call): a
/// reused connection saves a TCP and TLS handshake (a round trip or two before the first
/// token). A turn's request lasts seconds and calls speak every ten or so, so a few dozen are
/// busy at once even at a thousand calls; an idle one costs its buffers, about 50 KiB.
const IDLE_CONNECTIONS: usize = 64;

/// A client for one configuration; cheap to clone (clones share the agent, its connection
/// pool, and the request scope that [`shutdown`](AnthropicClient::shutdown) ends).
#[derive(Clone)]
pub struct AnthropicClient {
    agent: ureq::Agent,
    scope: RequestScope,
    url: String,
    api_key: Secret,
    first_token_timeout: Duration,
    stall_timeout: Duration,
    stream_timeout: Duration,
    /// Retries after the first attempt.
    max_retries: u32,
    /// First backoff step (doubles each retry, at most 8 s, jittered) when the API gives no
    /// usable `retry-after`.
    backoff: Duration,
}

/// ureq's per-read timeout: a tick at which [`Paced`] checks its deadlines. The greatest
/// common divisor of the two timeouts (so round values are enforced exactly), but at least an
/// eighth of the shorter one (so odd values cost at most eight wake-ups per quiet period).
pub fn read_tick(first_token: Duration, stall: Duration) -> Duration {
    let (a, b) = (first_token.as_millis() as u64, stall.as_millis() as u64);
    let shorter = a.min(b).max(1);
    let (mut x, mut y) = (a.max(1), b.max(1));
    while y != 0 {
        (x, y) = (y, x % y);
    }
    Duration::from_millis(x.max(shorter / 8).max(1))
}

impl AnthropicClient {
    pub fn new(config: &AnthropicConfig, api_key: Secret) -> AnthropicClient {
        let agent = crate::resolve::provider_agent(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(5)))
                .timeout_per_read(Some(read_tick(
                    config.first_token_timeout,
                    config.stall_timeout,
                )))
                .timeout_recv_response(Some(config.first_token_timeout))
                .timeout_global(Some(config.stream_timeout))
                .max_idle_connections(IDLE_CONNECTIONS)
                .max_idle_connections_per_host(IDLE_CONNECTIONS),
        );
        AnthropicClient {
            agent,
            scope: RequestScope::new(),
            url: format!("{}/v1/messages", config.base_url),
            api_key,
            first_token_timeout: config.first_token_timeout,
            stall_timeout: config.stall_timeout,
            stream_timeout: config.stream_timeout,
            max_retries: config.max_retries,
            backoff: Duration::from_millis(500),
        }
    }

    /// Another user of the same agent (one per call): its requests share the pool, and its
    /// [`shutdown`](AnthropicClient::shutdown) ends its own requests only.
    pub fn handle(&self) -> AnthropicClient {
        AnthropicClient {
            scope: RequestScope::new(),
            ..self.clone()
        }
    }

    /// Interrupts every request of this client (and its clones, not its other handles) now, a
    /// blocked read included; later requests fail at once. For the end of a call: its worker
    /// must not wait out a timeout.
    pub fn shutdown(&self) {
        self.scope.shutdown();
    }

    /// Changes the retry policy (tests use short backoffs). The backoff is still capped at 8 s
    /// and jittered as the SDK does.
    pub fn with_retries(mut self, max_retries: u32, backoff: Duration) -> AnthropicClient {
        self.max_retries = max_retries;
        self.backoff = backoff;
        self
    }

    /// Streams the response to `body` (see [`super::request::build`]), handing every item to
    /// `on_item` as it arrives.
    pub fn stream(
        &self,
        body: &Value,
        cancel: &Cancel,
        on_item: impl FnMut(&StreamItem),
    ) -> Result<Outcome, LlmError> {
        let body = serde_json::to_vec(body).map_err(|e| LlmError::Malformed(e.to_string()))?;
        self.stream_json(&body, cancel, on_item)
    }

    /// [`stream`](Self::stream) with the body already serialized: a call's worker drops the
    /// request's JSON tree (the system prompt, the tools, the history: tens of KiB) before the
    /// seconds the answer takes to stream.
    pub fn stream_json(
        &self,
        body: &[u8],
        cancel: &Cancel,
        mut on_item: impl FnMut(&StreamItem),
    ) -> Result<Outcome, LlmError> {
        // This thread's reads and writes are this client's until the stream is over.
        let _scope = self.scope.enter();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = Instant::now();
            let (error, retry_after) = match self.attempt(body, cancel, started, &mut on_item) {
                Ok(mut outcome) => {
                    outcome.attempts = attempt;
                    return Ok(outcome);
                }
                Err(Failure::Final(error)) => {
                    EVENTS.provider_error("anthropic", error.metric_kind());
                    return Err(error);
                }
                Err(Failure::Retryable { error, retry_after }) => (error, retry_after),
            };
            if attempt > self.max_retries || self.scope.is_shut_down() {
                EVENTS.provider_error("anthropic", error.metric_kind());
                return Err(error);
            }
            EVENTS.provider_retry("anthropic", error.metric_kind());
            let wait = retry_after
                .unwrap_or_else(|| retry::backoff(self.backoff, attempt - 1, retry::random_unit()));
            log::warn!(
                attempt = attempt,
                waitMs = wait.as_millis() as u64,
                error:% = error;
                "anthropic.retry"
            );
            if !cancel.sleep(wait) {
                return Ok(Outcome {
                    usage: Usage::default(),
                    stop_reason: None,
                    content: Vec::new(),
                    cancelled: true,
                    attempts: attempt,
                });
            }
        }
    }

    fn attempt(
        &self,
        body: &[u8],
        cancel: &Cancel,
        started: Instant,
        on_item: &mut impl FnMut(&StreamItem),
    ) -> Result<Outcome, Failure> {
        let response = self
            .agent
            .post(&self.url)
            .header("x-api-key", self.api_key.expose())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .send(body)
            .map_err(|err| match err {
                ureq::Error::Timeout(what) => Failure::Retryable {
                    error: LlmError::Timeout(what.to_string()),
                    retry_after: None,
                },
                other => Failure::Retryable {
                    error: LlmError::Transport(other.to_string()),
                    retry_after: None,
                },
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            let headers = response.headers();
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let retryable = retry::should_retry(status, header("x-should-retry"));
            let retry_after = retry::honoured_wait(retry::requested_wait_secs(
                header("retry-after-ms"),
                header("retry-after"),
                crate::timestamp::now_ms(),
            ));
            let mut text = String::new();
            let _ = response
                .into_body()
                .into_reader()
                .take(MAX_ERROR_BODY)
                .read_to_string(&mut text);
            let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let error = LlmError::Http {
                status,
                kind: parsed["error"]["type"]
                    .as_str()
                    .unwrap_or("http_error")
                    .to_string(),
                message: parsed["error"]["message"]
                    .as_str()
                    .unwrap_or(text.trim())
                    .chars()
                    .take(500)
                    .collect(),
            };
            return Err(if retryable {
                Failure::Retryable { error, retry_after }
            } else {
                Failure::Final(error)
            });
        }

        let spoken = Rc::new(Cell::new(false));
        let paced = Paced {
            inner: response.into_body().into_reader(),
            started,
            last_data: Instant::now(),
            first_token: self.first_token_timeout,
            stall: self.stall_timeout,
            spoke: spoken.clone(),
        };
        let mut events = SseReader::new(BufReader::new(paced), MAX_SSE_LINE);
        let mut assembler = Assembler::new();
        let mut spoke = false;
        loop {
            if cancel.is_cancelled() {
                return Ok(finish(&assembler, true));
            }
            if !spoke && started.elapsed() > self.first_token_timeout {
                return Err(Failure::Final(LlmError::FirstTokenTimeout(
                    self.first_token_timeout,
                )));
            }
            let event = match events.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => {
                    return Err(self.failure(
                        spoke,
                        LlmError::Malformed("the stream ended before message_stop".into()),
                    ))
                }
                Err(SseError::Io(err)) => {
                    let error = match ureq::Error::from(err) {
                        ureq::Error::Timeout(ureq::Timeout::PerRead) if !spoke => {
                            LlmError::FirstTokenTimeout(self.first_token_timeout)
                        }
                        ureq::Error::Timeout(ureq::Timeout::PerRead) => LlmError::Timeout(format!(
                            "the stream stalled: nothing for {} ms",
                            self.stall_timeout.as_millis()
                        )),
                        ureq::Error::Timeout(what)
                            if !spoke && started.elapsed() < self.stream_timeout =>
                        {
                            log::debug!(reason:% = what; "anthropic.first_token_timeout");
                            LlmError::FirstTokenTimeout(self.first_token_timeout)
                        }
                        ureq::Error::Timeout(what) => LlmError::Timeout(what.to_string()),
                        other => LlmError::Transport(other.to_string()),
                    };
                    return Err(Failure::Final(error));
                }
                Err(other) => return Err(Failure::Final(LlmError::Malformed(other.to_string()))),
            };
            for item in assembler.push(&event) {
                match &item {
                    StreamItem::Text(_) | StreamItem::ToolUse { .. } => {
                        spoke = true;
                        spoken.set(true);
                    }
                    StreamItem::Error { kind, message } if kind == "malformed_stream" => {
                        return Err(Failure::Final(LlmError::Malformed(message.clone())))
                    }
                    StreamItem::Error { kind, message } => {
                        return Err(self.failure(
                            spoke,
                            LlmError::Stream {
                                kind: kind.clone(),
                                message: message.clone(),
                            },
                        ))
                    }
                    StreamItem::Stop { .. } => {
                        on_item(&item);
                        return Ok(finish(&assembler, false));
                    }
                }
                on_item(&item);
            }
        }
    }

    /// A failure is retried only while nothing has been said.
    fn failure(&self, spoke: bool, error: LlmError) -> Failure {
        if spoke {
            Failure::Final(error)
        } else {
            Failure::Retryable {
                error,
                retry_after: None,
            }
        }
    }
}

enum Failure {
    Final(LlmError),
    Retryable {
        error: LlmError,
        retry_after: Option<Duration>,
    },
}

fn finish(assembler: &Assembler, cancelled: bool) -> Outcome {
    Outcome {
        usage: assembler.usage(),
        stop_reason: if cancelled {
            None
        } else {
            assembler.stop_reason().map(str::to_string)
        },
        content: assembler.content().to_vec(),
        cancelled,
        attempts: 1,
    }
}

/// The response body, read with two deadlines: before the first words, `first_token` from
/// the request's start; after them, `stall` from the last bytes received. ureq's per-read
/// timeout fires at each [`read_tick`]; a tick short of the deadline resumes the read.
struct Paced<R> {
    inner: R,
    started: Instant,
    last_data: Instant,
    first_token: Duration,
    stall: Duration,
    /// Set by the stream loop once words were delivered.
    spoke: Rc<Cell<bool>>,
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.last_data = Instant::now();
                    return Ok(n);
                }
                Err(err) if is_tick(&err) => {
                    let deadline = if self.spoke.get() {
                        self.last_data + self.stall
                    } else {
                        self.started + self.first_token
                    };
                    if Instant::now() + Duration::from_millis(5) >= deadline {
                        return Err(err);
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// A read ended by ureq's per-read timeout (not the whole response's).
fn is_tick(err: &io::Error) -> bool {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(|e| matches!(e, ureq::Error::Timeout(ureq::Timeout::PerRead)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_tick_divides_round_timeouts_and_bounds_odd_ones() {
        let ms = Duration::from_millis;
        assert_eq!(read_tick(ms(10_000), ms(10_000)), ms(10_000));
        assert_eq!(read_tick(ms(10_000), ms(4_000)), ms(2_000));
        assert_eq!(read_tick(ms(300), ms(1_000)), ms(100));
        // Coprime values: an eighth of the shorter, not 1 ms.
        assert_eq!(read_tick(ms(10_007), ms(3_001)), ms(375));
        assert_eq!(read_tick(ms(0), ms(0)), ms(1));
    }
}
