//! The MCP client against the simulator (SSE and JSON framing, expired sessions, a slow and an
//! absent server) and against a real server built with the official `mcp` Python package.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use cotrackpro_voice::providers::mcp::{McpClient, ToolOutcome};
use cotrackpro_voice::sim::mcp::{Framing, McpSim};

use crate::support::interop_python;

fn client(url: &str, timeout_ms: u64) -> McpClient {
    McpClient::new(url, None, Duration::from_millis(timeout_ms))
}

#[test]
fn tools_are_listed_and_called_whatever_the_framing() {
    for framing in [Framing::Sse, Framing::Json] {
        let sim = McpSim::start(framing).unwrap();
        let client = client(&sim.url(), 5000);
        let tools = client.list_tools().unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "start_session",
                "check_safety",
                "rewrite_message",
                "generate_artifact"
            ],
            "{framing:?}"
        );
        assert_eq!(
            tools[1].input_schema["required"],
            json!(["sessionId", "context"])
        );

        let outcome = client.call_tool(
            "check_safety",
            &json!({"sessionId": "sim-1", "context": "he has a gun"}),
        );
        assert!(!outcome.is_error);
        assert!(
            outcome.text.starts_with("Tier 1"),
            "{framing:?}: {}",
            outcome.text
        );
        let unknown = client.call_tool("launch_rockets", &json!({}));
        assert!(unknown.is_error);
        assert_eq!(sim.calls().len(), 2);
        assert_eq!(sim.sessions_opened(), 1, "one session for everything");
    }
}

#[test]
fn a_forgotten_session_is_opened_again_once() {
    let sim = McpSim::start(Framing::Sse).unwrap();
    let client = client(&sim.url(), 5000);
    assert!(
        !client
            .call_tool(
                "start_session",
                &json!({"role": "parent", "trigger": "exchange"})
            )
            .is_error
    );
    sim.forget_sessions();
    let outcome = client.call_tool(
        "generate_artifact",
        &json!({"sessionId": "sim-1", "artifact_type": "timeline"}),
    );
    assert!(!outcome.is_error, "{}", outcome.text);
    assert_eq!(sim.sessions_opened(), 2);
}

#[test]
fn a_slow_or_absent_server_is_an_error_result_not_a_failure() {
    let sim = McpSim::start(Framing::Sse).unwrap();
    let client = client(&sim.url(), 400);
    client.list_tools().unwrap();
    sim.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let outcome = client.call_tool("check_safety", &json!({"sessionId": "s", "context": "x"}));
    assert!(outcome.is_error);
    assert!(
        outcome.text.contains("Nothing the caller said was lost"),
        "{}",
        outcome.text
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    let ToolOutcome { text, is_error } =
        client_for_down(&url).call_tool("check_safety", &json!({}));
    assert!(is_error);
    assert!(text.contains("not answering"), "{text}");
}

fn client_for_down(url: &str) -> McpClient {
    client(url, 1000)
}

/// The official Python MCP server of `scripts/mcp_server.py`, killed on drop.
struct OfficialServer {
    child: Child,
    addr: SocketAddr,
}

impl OfficialServer {
    fn start() -> OfficialServer {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let script =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/mcp_server.py");
        let child = Command::new(interop_python())
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the official MCP server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = OfficialServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the official MCP server did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for OfficialServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_official_python_mcp_server_understands_us() {
    let server = OfficialServer::start();
    // The official server checks Host against 127.0.0.1:* — the URL carries the port.
    let client = client(&format!("http://{}/mcp", server.addr), 10_000);
    let tools = client.list_tools().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"start_session") && names.contains(&"check_safety"),
        "{names:?}"
    );
    let check = tools.iter().find(|t| t.name == "check_safety").unwrap();
    assert_eq!(check.input_schema["type"], "object");

    let outcome = client.call_tool(
        "check_safety",
        &json!({"sessionId": "s1", "context": "he has a gun"}),
    );
    assert_eq!(
        outcome,
        ToolOutcome {
            text: "tier 1 for session s1".into(),
            is_error: false
        }
    );
    let broken = client.call_tool("broken_tool", &json!({"reason": "test"}));
    assert!(broken.is_error, "{broken:?}");
    let missing_args = client.call_tool("check_safety", &json!({}));
    assert!(missing_args.is_error, "{missing_args:?}");
}

#[test]
fn the_tool_catalog_never_waits_for_a_slow_server() {
    use cotrackpro_voice::providers::mcp::{default_tools, ToolCatalog};
    use std::sync::Arc;

    let sim = McpSim::start(Framing::Sse).unwrap();
    sim.set_delay(Duration::from_millis(500));
    let catalog = ToolCatalog::new(vec![default_tools()[0].clone()]);
    let started = Instant::now();
    let refresh =
        ToolCatalog::refresh_in_background(&catalog, Arc::new(client(&sim.url(), 5000))).unwrap();
    // The call can start now, with the built-in tools.
    assert_eq!(catalog.current().len(), 1);
    assert!(!catalog.is_refreshed());
    assert!(started.elapsed() < Duration::from_millis(100));
    refresh.join().unwrap();
    assert!(catalog.is_refreshed());
    assert_eq!(catalog.current().len(), 4);

    // An absent server leaves the built-ins in place.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    let catalog = ToolCatalog::new(default_tools());
    ToolCatalog::refresh_in_background(&catalog, Arc::new(client(&url, 500)))
        .unwrap()
        .join()
        .unwrap();
    assert!(!catalog.is_refreshed());
    assert_eq!(catalog.current().len(), 4);
}
