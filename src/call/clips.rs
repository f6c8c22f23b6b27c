//! Pre-rendered speech (`cotrackpro-voice generate-audio`): the fixed phrases and greetings per
//! voice, as raw 8 kHz μ-law files under `AUDIO_DIR`, listed in `manifest.json`:
//!
//! ```json
//! {"format": "ulaw_8000",
//!  "clips": [{"voice": "<voice id>", "name": "hold", "text": "…", "file": "<voice id>/hold.ulaw"}]}
//! ```
//!
//! A clip is used only if its `text` is still the phrase's text (a reworded phrase falls back to
//! live speech until the audio is generated again). A missing or unreadable manifest means no
//! clips: every phrase is spoken live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::personas::prompts::{self, Phrase};
use crate::personas::Role;

/// The manifest's file name inside `AUDIO_DIR`.
pub const MANIFEST: &str = "manifest.json";
/// Larger files are not clips (a phrase is a few seconds: 8 KB a second).
const MAX_CLIP_BYTES: u64 = 2 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub clips: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub voice: String,
    pub name: String,
    pub text: String,
    /// Relative to `AUDIO_DIR`.
    pub file: String,
}

/// Every fixed piece of speech: its clip name and current text.
pub fn catalogue() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = Phrase::ALL
        .iter()
        .map(|p| (p.name().to_string(), p.text().to_string()))
        .collect();
    for role in Role::ALL {
        all.push((greeting_name(role), prompts::greeting(role)));
    }
    all
}

pub fn greeting_name(role: Role) -> String {
    format!("greeting_{}", role.as_str())
}

/// The loaded clips, by voice and name.
#[derive(Debug, Default)]
pub struct Clips {
    by_key: HashMap<(String, String), Arc<Vec<u8>>>,
}

impl Clips {
    /// Loads what `dir`'s manifest lists and is current; logs what it skipped.
    pub fn load(dir: &Path) -> Clips {
        let manifest_path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                log::info!(dir:% = dir.display(); "audio: no pre-rendered clips; phrases are spoken live");
                return Clips::default();
            }
            Err(err) => {
                log::warn!(file:% = manifest_path.display(), error:% = err; "audio.manifest unreadable; phrases are spoken live");
                return Clips::default();
            }
        };
        let manifest: Manifest = match serde_json::from_str(&text) {
            Ok(manifest) => manifest,
            Err(err) => {
                log::warn!(file:% = manifest_path.display(), error:% = err; "audio.manifest invalid; phrases are spoken live");
                return Clips::default();
            }
        };
        if manifest.format != "ulaw_8000" {
            log::warn!(format = manifest.format.as_str(); "audio.manifest format is not ulaw_8000; ignored");
            return Clips::default();
        }
        let current: HashMap<String, String> = catalogue().into_iter().collect();
        let mut clips = Clips::default();
        let mut stale = 0;
        for entry in manifest.clips {
            if current.get(&entry.name) != Some(&entry.text) {
                stale += 1;
                continue;
            }
            let path = clip_path(dir, &entry.file);
            let Some(path) = path else {
                log::warn!(file = entry.file.as_str(); "audio.clip path leaves AUDIO_DIR; skipped");
                continue;
            };
            match read_clip(&path) {
                Ok(audio) => {
                    clips
                        .by_key
                        .insert((entry.voice, entry.name), Arc::new(audio));
                }
                Err(err) => {
                    log::warn!(file:% = path.display(), error = err.as_str(); "audio.clip skipped")
                }
            }
        }
        if stale > 0 {
            log::warn!(count = stale; "audio: clips whose phrase changed are spoken live; run generate-audio");
        }
        log::info!(count = clips.by_key.len(); "audio.clips.loaded");
        clips
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn phrase(&self, voice: &str, phrase: Phrase) -> Option<Arc<Vec<u8>>> {
        self.get(voice, phrase.name())
    }

    pub fn greeting(&self, voice: &str, role: Role) -> Option<Arc<Vec<u8>>> {
        self.get(voice, &greeting_name(role))
    }

    fn get(&self, voice: &str, name: &str) -> Option<Arc<Vec<u8>>> {
        self.by_key
            .get(&(voice.to_string(), name.to_string()))
            .cloned()
    }
}

/// `file` under `dir`, refusing absolute paths and `..`.
fn clip_path(dir: &Path, file: &str) -> Option<PathBuf> {
    let relative = Path::new(file);
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    (plain && !file.is_empty()).then(|| dir.join(relative))
}

fn read_clip(path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size == 0 || size > MAX_CLIP_BYTES {
        return Err(format!("size {size} bytes is not a clip"));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_current_clips_and_skips_stale_or_escaping_ones() {
        let dir = std::env::temp_dir().join(format!(
            "cotrackpro-clips-{}-{}",
            std::process::id(),
            crate::ids::RequestId::generate().as_str()
        ));
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::write(dir.join("v1/hold.ulaw"), [0x7f_u8; 800]).unwrap();
        std::fs::write(dir.join("v1/apology.ulaw"), [0x7f_u8; 800]).unwrap();
        let manifest = Manifest {
            format: "ulaw_8000".into(),
            clips: vec![
                ManifestEntry {
                    voice: "v1".into(),
                    name: "hold".into(),
                    text: Phrase::Hold.text().into(),
                    file: "v1/hold.ulaw".into(),
                },
                ManifestEntry {
                    voice: "v1".into(),
                    name: "apology".into(),
                    text: "an older wording".into(),
                    file: "v1/apology.ulaw".into(),
                },
                ManifestEntry {
                    voice: "v1".into(),
                    name: "reprompt".into(),
                    text: Phrase::Reprompt.text().into(),
                    file: "../outside.ulaw".into(),
                },
            ],
        };
        std::fs::write(
            dir.join(MANIFEST),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        let clips = Clips::load(&dir);
        assert_eq!(clips.len(), 1);
        assert_eq!(clips.phrase("v1", Phrase::Hold).map(|a| a.len()), Some(800));
        assert!(clips.phrase("v1", Phrase::Apology).is_none());
        assert!(clips.phrase("v1", Phrase::Reprompt).is_none());
        assert!(clips.phrase("v2", Phrase::Hold).is_none());
        assert!(Clips::load(&dir.join("absent")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
