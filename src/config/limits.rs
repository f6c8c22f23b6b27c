//! Whether the process's limits can hold the configured calls: open descriptors
//! (`RLIMIT_NOFILE`) against `MAX_CONCURRENT_CALLS` times what a call needs plus the webhook
//! connections (`HTTP_MAX_CONNECTIONS`), and tasks — threads count as tasks — (the cgroup's
//! `pids.max`, which systemd's `TasksMax=` sets, and `RLIMIT_NPROC`) against the calls'. `check-config` prints the warnings; the comparison is pure ([`warnings`]), the
//! reading of the limits ([`ProcessLimits::read`]) is two files: `/proc/self/limits` and the
//! cgroup's `pids.max`.

/// Threads of one call at most: the call thread, the Twilio reader (which carries
/// speech-to-text), the model and text-to-speech workers, and the short-lived thread of a
/// speech-to-text handshake. (A thread that outlives its call keeps the call's place under
/// the cap, so the cap bounds these.)
pub const THREADS_PER_CALL: u64 = 5;

/// Descriptors of one call at most: the Twilio socket twice (the reader's and the writer's
/// halves), the speech-to-text socket, the text-to-speech socket and its worker's wake-up
/// pair, a handshake's wake-up pair while one runs, the reader's wake-up pair for the smart
/// turn end's commits (`TURN_END=smart`), and one Anthropic and one MCP connection in flight.
/// `bench` counts about 9 per call (`server_fds_per_call`: not every call holds a handshake
/// or a tool call at once).
pub const FDS_PER_CALL: u64 = 12;

/// Threads of the server itself, calls aside: HTTP workers, the acceptor, the records writer,
/// name lookups (at most 8), connection threads still in their handshake (at most 64), the
/// signal and tool-refresh threads, with room to spare.
pub const SERVER_THREADS: u64 = 128;

/// Descriptors of the server itself: listeners, the records and lock files, idle provider
/// connections (at most 64 + 16), handshakes in progress (at most 64), logs, with room.
/// Webhook connections come on top ([`webhook_fds`]).
pub const SERVER_FDS: u64 = 256;

/// Descriptors of the webhook tier at its cap: one a connection up to `HTTP_MAX_CONNECTIONS`,
/// and the spare the accept loop keeps for shedding a connection when descriptors run out.
/// Counted as the unit's LimitNOFILE= comment counts them: the accept loop survives running
/// out, but a flood of webhook connections then takes the descriptors calls need.
pub fn webhook_fds(http_max_connections: usize) -> u64 {
    (http_max_connections as u64).saturating_add(1)
}

/// `HTTP_MAX_CONNECTIONS`' default, which the unit's LimitNOFILE= is sized for.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;

/// The limits that bound the calls, as read (`None`: unlimited, or could not be read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessLimits {
    /// `RLIMIT_NOFILE`'s soft limit.
    pub open_files: Option<u64>,
    /// The cgroup's `pids.max` (systemd's `TasksMax=`).
    pub cgroup_tasks: Option<u64>,
    /// `RLIMIT_NPROC`'s soft limit (it counts every task of the user, not only ours).
    pub user_tasks: Option<u64>,
}

/// What `calls` simultaneous calls need with the webhook tier at `HTTP_MAX_CONNECTIONS`'
/// default: (descriptors, tasks). See [`needed_with`].
pub fn needed(calls: usize) -> (u64, u64) {
    needed_with(calls, DEFAULT_HTTP_MAX_CONNECTIONS)
}

/// What `calls` simultaneous calls and `http_max_connections` webhook connections need:
/// (descriptors, tasks).
pub fn needed_with(calls: usize, http_max_connections: usize) -> (u64, u64) {
    let calls = calls as u64;
    (
        calls * FDS_PER_CALL + SERVER_FDS + webhook_fds(http_max_connections),
        calls * THREADS_PER_CALL + SERVER_THREADS,
    )
}

/// [`warnings_with`] for the webhook tier at `HTTP_MAX_CONNECTIONS`' default.
pub fn warnings(calls: usize, limits: &ProcessLimits) -> Vec<String> {
    warnings_with(calls, DEFAULT_HTTP_MAX_CONNECTIONS, limits)
}

/// A warning for each limit that cannot hold `calls` calls beside `http_max_connections`
/// webhook connections.
pub fn warnings_with(
    calls: usize,
    http_max_connections: usize,
    limits: &ProcessLimits,
) -> Vec<String> {
    let (fds, tasks) = needed_with(calls, http_max_connections);
    let webhooks = webhook_fds(http_max_connections);
    let mut out = Vec::new();
    if let Some(limit) = limits.open_files.filter(|&l| l < fds) {
        out.push(format!(
            "MAX_CONCURRENT_CALLS={calls} with HTTP_MAX_CONNECTIONS={http_max_connections} \
             needs about {fds} open files ({FDS_PER_CALL} a call + {SERVER_FDS} + {webhooks} \
             for webhook connections) but RLIMIT_NOFILE is {limit}: calls past about {} will \
             fail (raise LimitNOFILE= in the unit, or lower HTTP_MAX_CONNECTIONS)",
            limit.saturating_sub(SERVER_FDS + webhooks) / FDS_PER_CALL
        ));
    }
    let task_limits = [
        (
            limits.cgroup_tasks,
            "the cgroup's pids.max",
            "TasksMax= in the unit",
        ),
        (limits.user_tasks, "RLIMIT_NPROC", "LimitNPROC="),
    ];
    for (limit, what, fix) in task_limits {
        if let Some(limit) = limit.filter(|&l| l < tasks) {
            out.push(format!(
                "MAX_CONCURRENT_CALLS={calls} needs about {tasks} threads ({THREADS_PER_CALL} a \
                 call + {SERVER_THREADS}) but {what} is {limit}: calls past about {} will be \
                 refused with 1013 (raise {fix})",
                limit.saturating_sub(SERVER_THREADS) / THREADS_PER_CALL
            ));
        }
    }
    out
}

impl ProcessLimits {
    /// This process's limits; any that cannot be read is `None` (no warning about it).
    pub fn read() -> ProcessLimits {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        ProcessLimits {
            open_files: soft_limit(&limits, "Max open files"),
            cgroup_tasks: cgroup_pids_max(),
            user_tasks: soft_limit(&limits, "Max processes"),
        }
    }
}

/// The soft limit of the `/proc/PID/limits` row named `row` (`None`: unlimited or absent).
fn soft_limit(limits: &str, row: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    line[row.len()..].split_whitespace().next()?.parse().ok()
}

/// `pids.max` of this process's cgroup (v2: the `0::` line of /proc/self/cgroup).
fn cgroup_pids_max() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let file = format!("/sys/fs/cgroup{}/pids.max", path.trim_end_matches('/'));
    parse_pids_max(&std::fs::read_to_string(file).ok()?)
}

/// `max` is no limit.
fn parse_pids_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_hold_the_calls_say_nothing() {
        // The unit's LimitNOFILE= comment: 1000 x 12 + 256 + 1,025 for webhooks = 13,281.
        let (fds, tasks) = needed(1000);
        assert_eq!((fds, tasks), (13_281, 5_128));
        assert_eq!(needed_with(1000, 16), (12_273, 5_128));
        let enough = ProcessLimits {
            open_files: Some(fds),
            cgroup_tasks: Some(tasks),
            user_tasks: None,
        };
        assert_eq!(warnings(1000, &enough), Vec::<String>::new());
        assert_eq!(
            warnings(1000, &ProcessLimits::default()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_short_limit_is_named_with_the_calls_it_holds() {
        let short = ProcessLimits {
            open_files: Some(2048),
            cgroup_tasks: Some(4915),
            user_tasks: Some(5127),
        };
        let warnings = warnings(1000, &short);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("RLIMIT_NOFILE is 2048"),
            "{}",
            warnings[0]
        );
        // (2048 - 256 - 1025) / 12: the webhook connections' share is not the calls'.
        assert!(warnings[0].contains("past about 63 "), "{}", warnings[0]);
        assert!(warnings[1].contains("pids.max is 4915"), "{}", warnings[1]);
        assert!(warnings[1].contains("past about 957 "), "{}", warnings[1]);
        assert!(
            warnings[2].contains("RLIMIT_NPROC is 5127"),
            "{}",
            warnings[2]
        );
    }

    #[test]
    fn the_webhook_tier_counts_against_the_descriptors() {
        let limits = ProcessLimits {
            open_files: Some(1024),
            ..ProcessLimits::default()
        };
        // 50 calls fit alone (856), not beside 1,024 webhook connections (1,881)...
        let crowded = warnings_with(50, 1024, &limits);
        assert_eq!(crowded.len(), 1, "{crowded:?}");
        assert!(
            crowded[0].contains("needs about 1881 open files")
                && crowded[0].contains("HTTP_MAX_CONNECTIONS=1024")
                && crowded[0].contains("past about 0 "),
            "{}",
            crowded[0]
        );
        // ...and do beside 16.
        assert_eq!(warnings_with(50, 16, &limits), Vec::<String>::new());
        assert_eq!(warnings(50, &limits), crowded, "the default cap is 1024");
    }

    #[test]
    fn soft_limits_are_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96365                96365                processes \n\
                      Max open files            20000                524288               files     \n\
                      Max locked memory         unlimited            unlimited            bytes     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(20000));
        assert_eq!(soft_limit(limits, "Max processes"), Some(96365));
        assert_eq!(soft_limit(limits, "Max locked memory"), None);
        assert_eq!(soft_limit("", "Max open files"), None);
    }

    #[test]
    fn pids_max_reads_a_number_or_no_limit() {
        assert_eq!(parse_pids_max("5632\n"), Some(5632));
        assert_eq!(parse_pids_max("max\n"), None);
    }
}
