//! Simulated providers: real servers on loopback ports speaking each provider's wire protocol,
//! for the tests and the `demo` and `sim` commands. They are product code,
//! not test fixtures: a newcomer's first call runs against them.

pub mod anthropic;
pub mod caller;
pub mod elevenlabs;
pub mod elevenlabs_stt;
pub mod elevenlabs_tts;
pub mod hops;
pub mod http;
pub mod listener;
pub mod mcp;
pub mod tls;
pub mod twilio;
pub mod voice;
pub mod wav;

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// The account the Twilio simulator accepts (printed by `sim`; not a real credential).
pub const SIM_TWILIO_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
pub const SIM_TWILIO_AUTH_TOKEN: &str = "sim-twilio-auth-token";
/// The key the Anthropic simulator is happy with (it checks that one is sent).
pub const SIM_ANTHROPIC_API_KEY: &str = "sim-anthropic-key";

/// How fast the simulated providers answer; `None` keeps each one's realistic default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimTiming {
    pub first_token_ms: Option<u64>,
    pub token_ms: Option<u64>,
    pub tts_first_byte_ms: Option<u64>,
    pub stt_commit_ms: Option<u64>,
    /// The network round trip to every provider: each new connection is served that much
    /// later twice (its handshake, then its first response). `None` is none (tests, demo).
    pub provider_rtt_ms: Option<u64>,
}

/// Every simulated provider, running.
pub struct Simulators {
    pub anthropic: anthropic::AnthropicSim,
    pub elevenlabs: elevenlabs::ElevenLabsSim,
    pub mcp: mcp::McpSim,
    pub twilio: twilio::TwilioSim,
    /// `Some` when started with [`Simulators::start_tls`]: the file of the CA clients trust
    /// (removed when the simulators stop).
    ca_file: Option<tls::CaFile>,
    /// Per-hop times taken at the simulators' sockets (and by callers given
    /// [`Simulators::hop_clock`]).
    hop_clock: Arc<hops::HopClock>,
}

impl Simulators {
    /// Starts them all with realistic timing.
    pub fn start() -> io::Result<Simulators> {
        Simulators::start_with(SimTiming::default())
    }

    /// Starts them all, with `timing` overriding the defaults it names.
    pub fn start_with(timing: SimTiming) -> io::Result<Simulators> {
        Simulators::start_serving(timing, None)
    }

    /// Starts them all, over TLS with `tls` when given.
    fn start_serving(timing: SimTiming, tls: listener::Tls) -> io::Result<Simulators> {
        let ms = Duration::from_millis;
        let llm = anthropic::Timing::default();
        let tts = elevenlabs_tts::TtsSimOptions::default();
        let stt = elevenlabs_stt::SttSimOptions::default();
        let sims = Simulators {
            anthropic: anthropic::AnthropicSim::start_with_tls(
                anthropic::Timing {
                    first_token: timing.first_token_ms.map_or(llm.first_token, ms),
                    per_token: timing.token_ms.map_or(llm.per_token, ms),
                },
                tls.clone(),
            )?,
            elevenlabs: elevenlabs::ElevenLabsSim::start_with_tls(
                elevenlabs_tts::TtsSimOptions {
                    first_byte: timing.tts_first_byte_ms.map_or(tts.first_byte, ms),
                    ..tts
                },
                elevenlabs_stt::SttSimOptions {
                    commit_latency: timing.stt_commit_ms.map_or(stt.commit_latency, ms),
                    ..stt
                },
                tls.clone(),
            )?,
            mcp: mcp::McpSim::start_with_tls(mcp::Framing::Sse, tls.clone())?,
            twilio: twilio::TwilioSim::start_with_tls(
                SIM_TWILIO_ACCOUNT_SID,
                SIM_TWILIO_AUTH_TOKEN,
                tls,
            )?,
            ca_file: None,
            hop_clock: Arc::new(hops::HopClock::new()),
        };
        sims.anthropic.record_hops(Arc::clone(&sims.hop_clock));
        sims.elevenlabs
            .stt()
            .record_hops(Arc::clone(&sims.hop_clock));
        sims.elevenlabs
            .tts()
            .record_hops(Arc::clone(&sims.hop_clock));
        sims.set_provider_rtt(ms(timing.provider_rtt_ms.unwrap_or(0)));
        Ok(sims)
    }

    /// The clock the simulators time hops on; give it to simulated callers
    /// ([`caller::CallerOptions::hops`]) so they time their ends too.
    pub fn hop_clock(&self) -> Arc<hops::HopClock> {
        Arc::clone(&self.hop_clock)
    }

    /// What the hops measured so far (see [`hops`]).
    pub fn hops(&self) -> hops::Hops {
        self.hop_clock.hops()
    }

    /// Makes what the simulators send unique per call, so every hop can be matched under
    /// load: the model's replies are numbered and each TTS piece's first samples carry its
    /// number (inaudibly).
    /// (Transcripts are unique when the utterances pushed are; callers need pitches of
    /// their own.)
    pub fn distinct_for_hops(&self, on: bool) {
        self.anthropic.number_replies(on);
        self.elevenlabs.tts().tag_audio(on);
    }

    /// Simulates a network round trip of `rtt` to every provider for connections opened from
    /// now on (zero: none).
    pub fn set_provider_rtt(&self, rtt: Duration) {
        self.anthropic.set_rtt(rtt);
        self.elevenlabs.set_rtt(rtt);
        self.mcp.set_rtt(rtt);
        self.twilio.set_rtt(rtt);
    }

    /// Starts them all as [`Simulators::start_with`] does, served over TLS as production's
    /// providers are: `https://localhost:PORT` and `wss://localhost:PORT` (a real host name,
    /// looked up like any other), with a certificate from a CA made now; each simulator ends
    /// TLS on its connections' own threads. [`Simulators::env`] then holds the secure URLs and
    /// sets `PROVIDER_CA_FILE` to the CA's file.
    pub fn start_tls(timing: SimTiming) -> io::Result<Simulators> {
        let ca = tls::SimCa::generate()?;
        let mut sims = Simulators::start_serving(timing, Some(ca.server_config()))?;
        sims.ca_file = Some(tls::CaFile::write(ca.ca_pem())?);
        Ok(sims)
    }

    /// The file of the CA the simulators' certificates come from, when serving TLS.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_ref().map(tls::CaFile::path)
    }

    /// The variables that point a server at these simulators.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("ANTHROPIC_BASE_URL", self.anthropic.base_url()),
            ("ANTHROPIC_API_KEY", SIM_ANTHROPIC_API_KEY.to_string()),
            ("ELEVENLABS_WS_BASE", self.elevenlabs.ws_base_url()),
            ("ELEVENLABS_API_BASE", self.elevenlabs.api_base_url()),
            (
                "ELEVENLABS_API_KEY",
                elevenlabs_tts::TtsSimOptions::default().api_key,
            ),
            ("COTRACKPRO_MCP_URL", self.mcp.url()),
            ("TWILIO_API_BASE", self.twilio.base_url()),
            ("TWILIO_ACCOUNT_SID", SIM_TWILIO_ACCOUNT_SID.to_string()),
            ("TWILIO_AUTH_TOKEN", SIM_TWILIO_AUTH_TOKEN.to_string()),
        ];
        if let Some(path) = self.ca_file() {
            env.push(("PROVIDER_CA_FILE", path.display().to_string()));
        }
        env
    }
}

/// `cotrackpro-voice sim`: starts the simulators, prints their variables (an env file a server
/// can read with `--env-file`), and serves until the process is stopped.
pub fn run(timing: SimTiming) -> io::Result<()> {
    let sims = Simulators::start_with(timing)?;
    println!("# cotrackpro-voice simulated providers; stop with Ctrl-C");
    for (key, value) in sims.env() {
        println!("{key}={value}");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
