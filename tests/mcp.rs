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

/// Posts a model request with these tools to the Anthropic simulator: (status, body).
fn model_request(
    tools: &[cotrackpro_voice::providers::anthropic::ToolDefinition],
) -> (u16, String) {
    use cotrackpro_voice::sim::anthropic::{AnthropicSim, Timing};
    let sim = AnthropicSim::start(Timing {
        first_token: Duration::from_millis(1),
        per_token: Duration::from_millis(1),
    })
    .unwrap();
    let tools: Vec<serde_json::Value> = tools
        .iter()
        .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
        .collect();
    let body = json!({"model": "claude-test", "max_tokens": 50, "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "hello"}]});
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .post(&format!("{}/v1/messages", sim.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

#[test]
fn a_dotted_tool_name_never_reaches_the_model_and_the_fake_model_refuses_one() {
    let sim = McpSim::start(Framing::Sse).unwrap();
    let long = "x".repeat(100);
    for name in ["docs.search", "docs_search", long.as_str()] {
        sim.add_tool(
            name,
            "a tool with a name MCP allows",
            json!({"content": [{"type": "text", "text": format!("from {name}")}]}),
        );
    }
    let client = client(&sim.url(), 5000);
    let tools = client.list_tools().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names[4..],
        ["docs_search_2", "docs_search", &"x".repeat(64)],
        "the valid name keeps its own; the dotted one is mapped around it"
    );
    assert!(names.iter().all(|n| !n.contains('.') && n.len() <= 64));

    // The model's name reaches the server as the server's own.
    let outcome = client.call_tool("docs_search_2", &json!({}));
    assert_eq!(outcome.text, "from docs.search");
    let outcome = client.call_tool("docs_search", &json!({}));
    assert_eq!(outcome.text, "from docs_search");
    let outcome = client.call_tool(&"x".repeat(64), &json!({}));
    assert_eq!(outcome.text, format!("from {long}"));
    let called: Vec<String> = sim.calls().into_iter().map(|(name, _)| name).collect();
    assert_eq!(called, ["docs.search", "docs_search", long.as_str()]);

    // The mapped tools make a request the (fake) model accepts; the raw names a 400.
    let (status, body) = model_request(&tools);
    assert_eq!(status, 200, "{body}");
    let mut raw = tools.clone();
    raw[4].name = "docs.search".into();
    let (status, body) = model_request(&raw);
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("tools.4.custom.name")),
        "{body}"
    );
}

#[test]
fn tools_list_follows_next_cursor_to_the_last_page() {
    let sim = McpSim::start(Framing::Json).unwrap();
    sim.set_page_size(2);
    sim.add_tool("lookup_policy", "on the third page", json!({"content": []}));
    let tools = client(&sim.url(), 5000).list_tools().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "start_session",
            "check_safety",
            "rewrite_message",
            "generate_artifact",
            "lookup_policy"
        ]
    );
}

#[test]
fn non_text_content_reaches_the_model_as_text() {
    let sim = McpSim::start(Framing::Sse).unwrap();
    let png = "A".repeat(16 * 1024); // 12 KB once decoded
    sim.add_tool(
        "rich",
        "every kind of content",
        json!({"content": [
            {"type": "text", "text": "Summary follows."},
            {"type": "image", "data": png, "mimeType": "image/png"},
            {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"},
            {"type": "resource", "resource": {"uri": "cotrackpro://plan/7", "mimeType": "text/plain",
                "text": "Safety plan: call 911 if in danger."}},
            {"type": "resource", "resource": {"uri": "cotrackpro://scan.pdf", "mimeType": "application/pdf",
                "blob": "AAAAAAAA"}},
            {"type": "resource_link", "uri": "cotrackpro://log/3", "name": "incident log"}],
            "structuredContent": {"tier": 2, "hotline": "988"}}),
    );
    sim.add_tool(
        "structured_only",
        "structured content and its JSON text, as the official SDK sends",
        json!({"content": [{"type": "text", "text": "{\"tier\": 3}"}],
            "structuredContent": {"tier": 3}}),
    );
    let client = client(&sim.url(), 5000);
    client.list_tools().unwrap();
    let outcome = client.call_tool("rich", &json!({}));
    assert!(!outcome.is_error);
    assert_eq!(
        outcome.text.lines().collect::<Vec<_>>(),
        [
            "Summary follows.",
            "[image: image/png, 12 KB]",
            "[audio: audio/wav, 3 bytes]",
            "[resource cotrackpro://plan/7]",
            "Safety plan: call 911 if in danger.",
            "[resource cotrackpro://scan.pdf: application/pdf, 6 bytes]",
            "[resource link: incident log cotrackpro://log/3]",
            r#"{"hotline":"988","tier":2}"#,
        ]
    );
    let outcome = client.call_tool("structured_only", &json!({}));
    assert_eq!(outcome.text, "{\"tier\": 3}", "not said twice");
}

#[test]
fn one_session_for_every_user_reopened_once_and_deleted_at_the_end() {
    use std::sync::Arc;
    let sim = McpSim::start(Framing::Sse).unwrap();
    let shared = Arc::new(client(&sim.url(), 5000));
    let run_ten = |shared: &Arc<McpClient>| {
        let threads: Vec<_> = (0..10)
            .map(|i| {
                let handle = shared.handle();
                std::thread::Builder::new()
                    .name(format!("mcp-user-{i}"))
                    .spawn(move || {
                        handle.call_tool("check_safety", &json!({"sessionId": "s", "context": "x"}))
                    })
                    .unwrap()
            })
            .collect();
        for thread in threads {
            let outcome = thread.join().unwrap();
            assert!(!outcome.is_error, "{}", outcome.text);
        }
    };
    run_ten(&shared);
    assert_eq!(sim.calls().len(), 10);
    assert_eq!(sim.sessions_opened(), 1, "one initialize for ten users");

    sim.forget_sessions();
    run_ten(&shared);
    assert_eq!(
        sim.sessions_opened(),
        2,
        "a 404 seen by ten users: one re-initialize"
    );

    // A user's shutdown ends its own requests, not the session others use.
    let ended = shared.handle();
    ended.shutdown();
    assert!(ended.call_tool("check_safety", &json!({})).is_error);
    let other = shared.handle();
    assert!(
        !other
            .call_tool("check_safety", &json!({"context": "x"}))
            .is_error
    );
    assert_eq!(sim.sessions_opened(), 2);

    shared.end_session();
    assert_eq!(sim.deleted_sessions(), ["sim-session-2"]);
    shared.end_session();
    assert_eq!(sim.deleted_sessions().len(), 1, "nothing left to delete");
}

#[test]
fn an_sse_stream_cut_after_its_priming_event_is_resumed() {
    let sim = McpSim::start(Framing::Sse).unwrap();
    sim.cut_after_priming(200);
    let client = client(&sim.url(), 5000);
    assert_eq!(client.list_tools().unwrap().len(), 4);
    let outcome = client.call_tool(
        "check_safety",
        &json!({"sessionId": "s", "context": "he has a gun"}),
    );
    assert!(outcome.text.starts_with("Tier 1"), "{}", outcome.text);
    let resumed = sim.resumed_after();
    assert_eq!(
        resumed.len(),
        2,
        "tools/list and tools/call resumed once each"
    );
    for after in resumed {
        assert!(
            after >= Duration::from_millis(200),
            "retry honoured: {after:?}"
        );
        assert!(after < Duration::from_millis(1500), "{after:?}");
    }

    // A retry longer than the time left ends the tool call as an error, in bounded time.
    let sim = McpSim::start(Framing::Sse).unwrap();
    let client = crate::mcp::client(&sim.url(), 1000);
    client.list_tools().unwrap();
    sim.cut_after_priming(60_000);
    let started = Instant::now();
    let outcome = client.call_tool("check_safety", &json!({"context": "x"}));
    assert!(outcome.is_error, "{}", outcome.text);
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn structured_content_the_official_sdk_wraps_is_said_once() {
    let sim = McpSim::start(Framing::Json).unwrap();
    sim.add_tool(
        "wrapped",
        "a plain return value, as the official Python SDK sends it",
        json!({"content": [{"type": "text", "text": "tier 1"}],
            "structuredContent": {"result": "tier 1"}}),
    );
    sim.add_tool(
        "more",
        "structured content that says more than the text",
        json!({"content": [{"type": "text", "text": "tier 1"}],
            "structuredContent": {"result": "tier 1", "hotline": "988"}}),
    );
    let client = client(&sim.url(), 5000);
    client.list_tools().unwrap();
    assert_eq!(client.call_tool("wrapped", &json!({})).text, "tier 1");
    assert_eq!(
        client.call_tool("more", &json!({})).text,
        "tier 1\n{\"hotline\":\"988\",\"result\":\"tier 1\"}"
    );
}

#[test]
fn a_handles_shutdown_cuts_its_own_tool_call_in_flight_and_no_other() {
    let sim = McpSim::start(Framing::Sse).unwrap();
    let shared = client(&sim.url(), 10_000);
    shared.list_tools().unwrap();
    // Every tool call now takes 3 s: had nothing cut it, each would end as a success.
    sim.set_delay(Duration::from_secs(3));
    let start = |name: &str, handle: std::sync::Arc<McpClient>| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tx.send(handle.call_tool("check_safety", &json!({"context": "x"})));
            })
            .unwrap();
        rx
    };
    let ended = std::sync::Arc::new(shared.handle());
    let ended_result = start("test-mcp-ended", ended.clone());
    let other_result = start("test-mcp-other", std::sync::Arc::new(shared.handle()));
    // Both requests reached the server (it records a call before its delay).
    let mut waited = 0;
    while sim.calls().len() < 2 {
        assert!(waited < 500, "the tool calls never arrived");
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }

    ended.shutdown();
    let outcome = ended_result
        .recv_timeout(Duration::from_secs(10))
        .expect("the call ended");
    assert!(outcome.is_error, "cut, not answered: {}", outcome.text);
    let outcome = other_result
        .recv_timeout(Duration::from_secs(10))
        .expect("the other call ended");
    assert!(!outcome.is_error, "untouched: {}", outcome.text);
    assert_eq!(sim.sessions_opened(), 1);
}
