//! The MCP section: the CoTrackPro tools server the conversation may call, if any.

use std::time::Duration;

use super::read::{Reader, Report, Whole, HTTP_SCHEMES};
use super::{BaseUrl, Secret};

const URL: &str = "COTRACKPRO_MCP_URL";
const TOKEN: &str = "COTRACKPRO_MCP_TOKEN";
const TOOL_TIMEOUT_MS: Whole = Whole {
    name: "MCP_TOOL_TIMEOUT_MS",
    default: 10_000,
    min: 100,
    max: 120_000,
};

#[derive(Clone, Debug)]
pub struct McpConfig {
    /// `None`: no tools server; the persona answers without tools.
    pub url: Option<BaseUrl>,
    pub token: Option<Secret>,
    pub timeout: Duration,
}

impl McpConfig {
    pub(super) fn read(r: &mut Reader<'_>) -> McpConfig {
        McpConfig {
            url: r.optional(URL, |v| BaseUrl::parse(v, HTTP_SCHEMES)),
            token: r.secret(TOKEN),
            timeout: r.millis(&TOOL_TIMEOUT_MS),
        }
    }

    pub(super) fn report(&self, out: &mut Report) {
        match &self.url {
            Some(url) => out.value(URL, url),
            None => out.value(URL, "[not set: no tools]"),
        }
        out.secret(TOKEN, &self.token);
        out.millis(TOOL_TIMEOUT_MS.name, self.timeout);
    }

    pub(super) fn provider_urls(&self) -> Vec<(&'static str, &BaseUrl)> {
        self.url.iter().map(|url| (URL, url)).collect()
    }
}
