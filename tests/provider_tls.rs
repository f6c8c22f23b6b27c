//! Provider TLS (`PROVIDER_CA_FILE`): against the simulators served over TLS, a provider whose
//! CA is not trusted is refused with a clear TLS error at once, by the WebSocket connector and
//! by a provider's ureq agent alike; once its CA is trusted, the same simulator is reached.

use std::time::{Duration, Instant};

use cotrackpro_voice::providers::ws::{self, ConnectError};
use cotrackpro_voice::sim::{SimTiming, Simulators};
use cotrackpro_voice::tls::{self, ExtraCas};

fn var(sims: &Simulators, key: &str) -> String {
    sims.env()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{key} in the simulators' env"))
}

fn agent() -> ureq::Agent {
    cotrackpro_voice::resolve::provider_agent(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5))),
    )
}

#[test]
fn a_provider_whose_ca_is_not_trusted_is_refused_with_a_tls_error_at_once() {
    // A CA made now: no test in this process has trusted it.
    let sims = Simulators::start_tls(SimTiming::default()).expect("simulators start");
    let ws_url = format!(
        "{}/v1/speech-to-text/realtime",
        var(&sims, "ELEVENLABS_WS_BASE")
    );
    assert!(ws_url.starts_with("wss://localhost:"), "{ws_url}");
    let started = Instant::now();
    match ws::connect(&ws_url, &[], Duration::from_secs(5)) {
        Err(ConnectError::Failed(why)) => {
            assert!(why.to_lowercase().contains("certificate"), "{why}")
        }
        other => panic!("expected a TLS failure, got {:?}", other.map(|_| ())),
    }
    let url = format!("{}/v1/messages", var(&sims, "ANTHROPIC_BASE_URL"));
    let err = agent().post(&url).send("{}").expect_err("refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn once_its_ca_is_trusted_the_same_simulator_is_reached_over_tls() {
    let sims = Simulators::start_tls(SimTiming::default()).expect("simulators start");
    let cas = ExtraCas::from_pem_file(sims.ca_file().expect("a CA file")).expect("the CA's PEM");
    assert_eq!(cas.len(), 1);
    tls::trust(&cas);
    let ws_url = format!(
        "{}/v1/speech-to-text/realtime?model_id=scribe_v2_realtime",
        var(&sims, "ELEVENLABS_WS_BASE")
    );
    let key = var(&sims, "ELEVENLABS_API_KEY");
    let socket = ws::connect(&ws_url, &[("xi-api-key", &key)], Duration::from_secs(5));
    match socket {
        Ok(socket) => assert!(ws::tcp_of(&socket).is_some()),
        // The handshake got as far as HTTP: TLS was accepted.
        Err(ConnectError::Refused { .. }) => {}
        Err(other) => panic!("expected the TLS handshake to pass: {other}"),
    }
    let url = format!("{}/v1/messages", var(&sims, "ANTHROPIC_BASE_URL"));
    let response = agent().post(&url).send("{}").expect("reached over https");
    assert!(response.status().as_u16() >= 200);
}
