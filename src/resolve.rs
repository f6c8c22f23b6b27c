//! Host-name lookups that end in a bounded time. `getaddrinfo(3)` (what
//! `std::net::ToSocketAddrs` calls) has no timeout of its own: a resolver that does not answer
//! holds the calling thread for as long as the system's resolver configuration allows, which can
//! be many seconds per attempt. Here a lookup runs on a named helper thread and the caller waits
//! on a channel until its deadline; a lookup still running then is left to finish on its own,
//! and at most [`MAX_LINGERING`] such threads may exist at once (past that a lookup fails at
//! once instead of adding another thread).
//!
//! An IP literal needs no lookup and starts no thread (the simulators on 127.0.0.1).
//!
//! [`Resolver`] also serves `ureq` (its `unversioned::resolver::Resolver` trait): [`bounded`]
//! makes an agent's twin that resolves through it. ureq's own connector then tries every address
//! returned, as [`crate::providers`]' WebSocket connector does.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Lookup threads that may still run after their caller gave up, per resolver.
pub const MAX_LINGERING: usize = 8;
/// The longest a lookup may take when the caller sets no shorter bound.
pub const LOOKUP_LIMIT: Duration = Duration::from_secs(5);

/// The lookup itself: host and port to addresses (the system's `getaddrinfo` by default;
/// tests put a resolver that hangs here).
pub type LookupFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No answer before the deadline.
    TimedOut { host: String, after: Duration },
    /// The lookup failed (no such name, no network, …).
    Failed { host: String, error: String },
    /// The name exists but has no address.
    NoAddress(String),
    /// Too many earlier lookups still hang: this one was not started.
    Busy { host: String, lingering: usize },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::TimedOut { host, after } => {
                write!(
                    f,
                    "resolving {host}: no answer within {} ms",
                    after.as_millis()
                )
            }
            ResolveError::Failed { host, error } => write!(f, "resolving {host}: {error}"),
            ResolveError::NoAddress(host) => write!(f, "{host} has no address"),
            ResolveError::Busy { host, lingering } => write!(
                f,
                "resolving {host}: not started, {lingering} earlier lookups still hang"
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

/// How long a name's addresses are used without asking again. ureq resolves the host before it
/// looks for an idle pooled connection, so without this every model request would wait for a
/// lookup (a thread and `getaddrinfo`, a DNS round trip on a VM) that its reused connection
/// does not need. Short, as the providers' addresses (CDNs) move.
pub const ADDRESS_TTL: Duration = Duration::from_secs(30);
/// How long an expired answer still serves when asking again fails (a resolver that is down
/// for a moment must not fail requests over connections that are fine).
pub const STALE_LIMIT: Duration = Duration::from_secs(600);
/// Names remembered: the providers' few hosts.
const CACHE_ENTRIES: usize = 32;

struct Cached {
    host: String,
    port: u16,
    addrs: Vec<SocketAddr>,
    at: Instant,
}

/// A bounded resolver: one lookup function, a limit per lookup, a cap on the lookups left
/// running after their caller gave up, and the recent answers ([`ADDRESS_TTL`]).
#[derive(Clone)]
pub struct Resolver {
    lookup: Arc<LookupFn>,
    limit: Duration,
    lingering: Arc<AtomicUsize>,
    max_lingering: usize,
    cache: Arc<std::sync::Mutex<Vec<Cached>>>,
    ttl: Duration,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("limit", &self.limit)
            .field("lingering", &self.lingering.load(Ordering::Relaxed))
            .field("max_lingering", &self.max_lingering)
            .finish()
    }
}

fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

impl Resolver {
    /// The process's resolver: the system's lookup, [`LOOKUP_LIMIT`], [`MAX_LINGERING`].
    pub fn system() -> Resolver {
        static SYSTEM: OnceLock<Resolver> = OnceLock::new();
        SYSTEM
            .get_or_init(|| Resolver::with_lookup(Arc::new(system_lookup), LOOKUP_LIMIT))
            .clone()
    }

    /// A resolver with its own lookup function and limit (and its own lingering count).
    pub fn with_lookup(lookup: Arc<LookupFn>, limit: Duration) -> Resolver {
        Resolver {
            lookup,
            limit,
            lingering: Arc::new(AtomicUsize::new(0)),
            max_lingering: MAX_LINGERING,
            cache: Arc::default(),
            ttl: ADDRESS_TTL,
        }
    }

    /// This resolver, using an answer for `ttl` instead of [`ADDRESS_TTL`] (zero: ask every
    /// time; an expired answer still serves when asking fails).
    pub fn remembering_for(mut self, ttl: Duration) -> Resolver {
        self.ttl = ttl;
        self
    }

    fn cached(
        &self,
        host: &str,
        port: u16,
        now: Instant,
        max_age: Duration,
    ) -> Option<Vec<SocketAddr>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .find(|c| {
                c.host == host && c.port == port && now.saturating_duration_since(c.at) < max_age
            })
            .map(|c| c.addrs.clone())
    }

    fn remember(&self, host: &str, port: u16, addrs: &[SocketAddr], now: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|c| !(c.host == host && c.port == port));
        if cache.len() >= CACHE_ENTRIES {
            // The oldest answer goes.
            if let Some(oldest) = (0..cache.len()).min_by_key(|&i| cache[i].at) {
                cache.swap_remove(oldest);
            }
        }
        cache.push(Cached {
            host: host.to_string(),
            port,
            addrs: addrs.to_vec(),
            at: now,
        });
    }

    /// Lookup threads of this resolver still running.
    pub fn lingering(&self) -> usize {
        self.lingering.load(Ordering::Relaxed)
    }

    /// The addresses of `host` (a name or an IP literal, without brackets), waiting until
    /// `deadline` or this resolver's limit, whichever comes first.
    pub fn resolve(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let now = Instant::now();
        if let Some(addrs) = self.cached(host, port, now, self.ttl) {
            return Ok(addrs);
        }
        match self.look_up(host, port, deadline) {
            Ok(addrs) => {
                self.remember(host, port, &addrs, now);
                Ok(addrs)
            }
            Err(err) => match self.cached(host, port, now, STALE_LIMIT) {
                Some(addrs) => {
                    log::warn!(host = host, error:% = err; "dns.stale: asking again failed; the last answer serves");
                    Ok(addrs)
                }
                None => Err(err),
            },
        }
    }

    /// Asks the lookup function, on a thread of its own, until `deadline` or the limit.
    fn look_up(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let started = Instant::now();
        let deadline = deadline.min(started + self.limit);
        // Count the thread before it exists, so the cap holds under a burst.
        let before = self.lingering.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_lingering {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return Err(ResolveError::Busy {
                host: host.to_string(),
                lingering: before,
            });
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let lookup = self.lookup.clone();
        let lingering = self.lingering.clone();
        let name = host.to_string();
        let spawned = std::thread::Builder::new()
            .name("dns-lookup".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = lookup(&name, port);
                lingering.fetch_sub(1, Ordering::AcqRel);
                // The caller may have given up: nobody to tell.
                let _ = tx.send(result);
            });
        if let Err(err) = spawned {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return Err(ResolveError::Failed {
                host: host.to_string(),
                error: format!("no thread for the lookup: {err}"),
            });
        }
        match rx.recv_deadline(deadline) {
            Ok(Ok(addrs)) if addrs.is_empty() => Err(ResolveError::NoAddress(host.to_string())),
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(err)) => Err(ResolveError::Failed {
                host: host.to_string(),
                error: err.to_string(),
            }),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                log::warn!(host = host, afterMs = started.elapsed().as_millis() as u64; "dns.timeout");
                Err(ResolveError::TimedOut {
                    host: host.to_string(),
                    after: started.elapsed(),
                })
            }
            // The thread ended without an answer (it panicked).
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(ResolveError::Failed {
                host: host.to_string(),
                error: "the lookup ended without an answer".into(),
            }),
        }
    }
}

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(ureq::Error::BadUri(uri.to_string()));
        };
        let port = match (authority.port_u16(), scheme) {
            (Some(port), _) => port,
            (None, "https") => 443,
            (None, "http") => 80,
            (None, other) => return Err(ureq::Error::BadUri(format!("unknown scheme: {other}"))),
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let budget = if timeout.after.is_not_happening() {
            self.limit
        } else {
            (*timeout.after).min(self.limit)
        };
        let addrs = match Resolver::resolve(self, host, port, Instant::now() + budget) {
            Ok(addrs) => addrs,
            Err(ResolveError::TimedOut { .. }) => return Err(ureq::Error::Timeout(timeout.reason)),
            Err(ResolveError::NoAddress(_)) => return Err(ureq::Error::HostNotFound),
            Err(err) => return Err(ureq::Error::Io(io::Error::other(err.to_string()))),
        };
        let mut result = ureq::unversioned::resolver::Resolver::empty(self);
        for addr in config.ip_family().keep_wanted(addrs.into_iter()).take(16) {
            result.push(addr);
        }
        if result.is_empty() {
            Err(ureq::Error::HostNotFound)
        } else {
            Ok(result)
        }
    }
}

/// `agent`'s configuration in an agent that resolves names through [`Resolver::system`].
pub fn bounded(agent: &ureq::Agent) -> ureq::Agent {
    agent_with(agent.config().clone(), Resolver::system())
}

/// A provider's agent from `builder`: bounded lookups, as [`bounded`], and the provider
/// transport ([`crate::http_client::ProviderConnector`]: the process's TLS configuration, see
/// [`crate::tls`], and requests a [`crate::http_client::RequestScope`] can interrupt), with
/// buffers sized for provider messages rather than ureq's 128 KiB defaults.
pub fn provider_agent(
    builder: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
) -> ureq::Agent {
    let config = builder
        .input_buffer_size(crate::http_client::INPUT_BUFFER_BYTES)
        .output_buffer_size(crate::http_client::OUTPUT_BUFFER_BYTES)
        .max_response_header_size(crate::http_client::INPUT_BUFFER_BYTES)
        .build();
    ureq::Agent::with_parts(
        config,
        crate::http_client::ProviderConnector,
        Resolver::system(),
    )
}

/// An agent with `config` that resolves names through `resolver` (tests: one that hangs).
pub fn agent_with(config: ureq::config::Config, resolver: Resolver) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        resolver,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hanging(secs: u64) -> Arc<LookupFn> {
        Arc::new(move |_host: &str, _port: u16| {
            std::thread::sleep(Duration::from_secs(secs));
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], 9))])
        })
    }

    #[test]
    fn an_ip_literal_needs_no_lookup() {
        let resolver = Resolver::with_lookup(hanging(60), Duration::from_secs(1));
        let addrs = resolver
            .resolve("::1", 443, Instant::now())
            .expect("a literal");
        assert_eq!(
            addrs,
            vec!["[::1]:443".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(resolver.lingering(), 0, "no thread was started");
    }

    #[test]
    fn a_hanging_lookup_ends_at_the_deadline_and_the_lingering_ones_are_capped() {
        let resolver = Resolver::with_lookup(hanging(3), Duration::from_secs(10));
        let started = Instant::now();
        let err = resolver
            .resolve("api.example", 443, started + Duration::from_millis(150))
            .expect_err("a hang is an error");
        assert!(matches!(err, ResolveError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(resolver.lingering(), 1);
        for _ in 1..MAX_LINGERING {
            let _ = resolver.resolve(
                "api.example",
                443,
                Instant::now() + Duration::from_millis(5),
            );
        }
        assert_eq!(resolver.lingering(), MAX_LINGERING);
        let started = Instant::now();
        let err = resolver
            .resolve("api.example", 443, started + Duration::from_secs(5))
            .expect_err("over the cap");
        assert!(matches!(err, ResolveError::Busy { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(100), "at once");
        assert_eq!(resolver.lingering(), MAX_LINGERING);
    }

    #[test]
    fn the_resolvers_limit_bounds_a_later_deadline() {
        let resolver = Resolver::with_lookup(hanging(3), Duration::from_millis(100));
        let started = Instant::now();
        let err = resolver
            .resolve("api.example", 443, started + Duration::from_secs(60))
            .expect_err("a hang is an error");
        assert!(matches!(err, ResolveError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn an_answer_in_time_is_every_address_and_an_empty_one_is_no_address() {
        let two = vec![
            SocketAddr::from(([127, 0, 0, 1], 80)),
            SocketAddr::from(([127, 0, 0, 2], 80)),
        ];
        let answer = two.clone();
        let resolver = Resolver::with_lookup(
            Arc::new(move |_: &str, _: u16| Ok(answer.clone())),
            Duration::from_secs(5),
        );
        let got = resolver
            .resolve("two.example", 80, Instant::now() + Duration::from_secs(5))
            .expect("resolves");
        assert_eq!(got, two);
        let empty = Resolver::with_lookup(
            Arc::new(|_: &str, _: u16| Ok(Vec::new())),
            Duration::from_secs(5),
        );
        assert_eq!(
            empty.resolve("none.example", 80, Instant::now() + Duration::from_secs(5)),
            Err(ResolveError::NoAddress("none.example".into()))
        );
    }

    /// A lookup that answers `answers` in turn (then fails), counting the times it was asked.
    fn scripted(answers: Vec<io::Result<Vec<SocketAddr>>>) -> (Arc<LookupFn>, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let answers = std::sync::Mutex::new(answers.into_iter());
        let lookup = Arc::new(move |_: &str, _: u16| {
            count.fetch_add(1, Ordering::SeqCst);
            let next = answers.lock().unwrap_or_else(|p| p.into_inner()).next();
            next.unwrap_or_else(|| Err(io::Error::other("no more answers")))
        });
        (lookup, asked)
    }

    #[test]
    fn an_answer_is_used_again_until_it_expires_and_per_host_and_port() {
        let one = vec![SocketAddr::from(([127, 0, 0, 1], 443))];
        let other = vec![SocketAddr::from(([127, 0, 0, 2], 443))];
        let (lookup, asked) = scripted(vec![Ok(one.clone()), Ok(other.clone()), Ok(other.clone())]);
        let resolver = Resolver::with_lookup(lookup, Duration::from_secs(5));
        let soon = || Instant::now() + Duration::from_secs(5);
        assert_eq!(
            resolver.resolve("api.example", 443, soon()),
            Ok(one.clone())
        );
        assert_eq!(
            resolver.resolve("api.example", 443, soon()),
            Ok(one.clone())
        );
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "the second request asked nobody"
        );
        // Another port is another answer.
        assert_eq!(
            resolver.resolve("api.example", 8443, soon()),
            Ok(other.clone())
        );
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // Expired: asked again, and the new answer is the one used.
        let impatient = resolver.clone().remembering_for(Duration::ZERO);
        assert_eq!(impatient.resolve("api.example", 443, soon()), Ok(other));
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn when_asking_again_fails_the_last_answer_serves_and_failures_are_not_remembered() {
        let one = vec![SocketAddr::from(([127, 0, 0, 1], 443))];
        let (lookup, asked) = scripted(vec![Ok(one.clone())]);
        let resolver =
            Resolver::with_lookup(lookup, Duration::from_secs(5)).remembering_for(Duration::ZERO);
        let soon = || Instant::now() + Duration::from_secs(5);
        assert_eq!(
            resolver.resolve("api.example", 443, soon()),
            Ok(one.clone())
        );
        // Expired at once; the resolver fails now, so the old answer serves.
        assert_eq!(resolver.resolve("api.example", 443, soon()), Ok(one));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // A name never answered has nothing to fall back on, and its failure is asked again.
        assert!(resolver.resolve("new.example", 443, soon()).is_err());
        assert!(resolver.resolve("new.example", 443, soon()).is_err());
        assert_eq!(asked.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_ureq_request_through_a_hanging_resolver_fails_in_bounded_time() {
        let resolver = Resolver::with_lookup(hanging(3), Duration::from_secs(10));
        let config = ureq::Agent::config_builder()
            .timeout_resolve(Some(Duration::from_millis(200)))
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        let agent = agent_with(config, resolver);
        let started = Instant::now();
        let result = agent.get("http://api.example/v1").call();
        assert!(matches!(result, Err(ureq::Error::Timeout(_))), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
