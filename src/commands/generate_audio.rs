//! `cotrackpro-voice generate-audio`: renders every fixed phrase and greeting for every
//! configured voice through ElevenLabs' REST text-to-speech into `AUDIO_DIR`, as raw 8 kHz μ-law
//! files plus `manifest.json` (see [`crate::call::clips`]). A clip whose text has not changed is
//! kept, so a re-run after a voice change only renders what is new. The manifest is replaced
//! atomically, and only after every file it lists is on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::call::clips::{greeting_name, Manifest, ManifestEntry, MANIFEST};
use crate::config::Config;
use crate::personas::prompts::{self, Phrase};
use crate::personas::Role;

/// Largest rendering accepted (a phrase is a few seconds: 8 KB a second).
const MAX_AUDIO_BYTES: u64 = 4 * 1024 * 1024;

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub rendered: usize,
    pub kept: usize,
    pub voices: usize,
}

/// Every (voice, clip name, text) the configuration can play.
pub fn wanted(config: &Config) -> BTreeMap<(String, String), String> {
    let mut greetings: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
    for role in Role::ALL {
        greetings
            .entry(config.calls.voice_for(role).to_string())
            .or_default()
            .insert(role);
    }
    for number in config.calls.number_overrides.values() {
        if let Some(voice) = &number.voice_id {
            let role = number.role.unwrap_or(config.calls.default_role);
            greetings.entry(voice.clone()).or_default().insert(role);
        }
    }
    let mut wanted = BTreeMap::new();
    for (voice, roles) in greetings {
        for phrase in Phrase::ALL {
            wanted.insert(
                (voice.clone(), phrase.name().to_string()),
                phrase.text().to_string(),
            );
        }
        for role in roles {
            wanted.insert(
                (voice.clone(), greeting_name(role)),
                prompts::greeting(role),
            );
        }
    }
    wanted
}

pub fn run(config: &Config) -> Result<Report, String> {
    crate::tls::trust(&config.provider_tls.extra_cas);
    let el = &config.elevenlabs;
    let key = el
        .api_key
        .as_ref()
        .ok_or("ELEVENLABS_API_KEY is not set: generate-audio renders through ElevenLabs")?;
    let dir = &config.calls.tuning.audio_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let old: Vec<ManifestEntry> = std::fs::read_to_string(dir.join(MANIFEST))
        .ok()
        .and_then(|text| serde_json::from_str::<Manifest>(&text).ok())
        .map(|m| m.clips)
        .unwrap_or_default();
    let agent = crate::resolve::provider_agent(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(el.connect_timeout))
            .timeout_global(Some(Duration::from_secs(60))),
    );
    let wanted = wanted(config);
    let voices: BTreeSet<&String> = wanted.keys().map(|(voice, _)| voice).collect();
    let mut report = Report {
        voices: voices.len(),
        ..Report::default()
    };
    let mut clips = Vec::with_capacity(wanted.len());
    for ((voice, name), text) in &wanted {
        let file = format!("{voice}/{name}.ulaw");
        let current = old
            .iter()
            .any(|e| e.voice == *voice && e.name == *name && e.text == *text && e.file == file)
            && dir.join(&file).is_file();
        if current {
            report.kept += 1;
        } else {
            let audio = render(&agent, config, key.expose(), voice, text)?;
            let path = dir.join(&file);
            write_atomically(&path, &audio)?;
            report.rendered += 1;
            println!("rendered {file} ({:.1} s)", audio.len() as f64 / 8000.0);
        }
        clips.push(ManifestEntry {
            voice: voice.clone(),
            name: name.clone(),
            text: text.clone(),
            file,
        });
    }
    let manifest = Manifest {
        format: "ulaw_8000".into(),
        clips,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    write_atomically(&dir.join(MANIFEST), text.as_bytes())?;
    Ok(report)
}

fn render(
    agent: &ureq::Agent,
    config: &Config,
    key: &str,
    voice: &str,
    text: &str,
) -> Result<Vec<u8>, String> {
    if !crate::personas::is_valid_voice_id(voice) {
        return Err(format!("{voice:?} is not a voice id"));
    }
    let url = format!(
        "{}/v1/text-to-speech/{voice}?output_format=ulaw_8000",
        config.elevenlabs.api_base
    );
    let body = json!({
        "text": text,
        "model_id": config.elevenlabs.model_id,
        "voice_settings": {"stability": 0.5, "similarity_boost": 0.75, "style": 0.0,
                           "use_speaker_boost": true, "speed": 1.0},
    });
    let response = agent
        .post(&url)
        .header("xi-api-key", key)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| format!("cannot reach ElevenLabs: {e}"))?;
    let status = response.status().as_u16();
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_AUDIO_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the audio: {e}"))?;
    if status != 200 {
        let detail = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).to_string();
        return Err(format!(
            "ElevenLabs answered {status} for voice {voice}: {detail}"
        ));
    }
    if bytes.is_empty() || bytes.len() as u64 > MAX_AUDIO_BYTES {
        return Err(format!(
            "ElevenLabs sent {} bytes for one phrase",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temp, path).map_err(fail)
}
