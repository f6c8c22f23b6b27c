//! The shipped systemd units pass `systemd-analyze verify` (with ExecStart pointed at the
//! binary under test, since the installed path does not exist here).

use std::path::PathBuf;
use std::process::Command;

fn verify(unit_name: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd").join(unit_name)).unwrap();
    assert!(
        unit.contains("/usr/local/bin/cotrackpro-voice"),
        "{unit_name} runs the installed binary"
    );
    let dir = std::env::temp_dir().join(format!("cotrackpro-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(unit_name);
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/cotrackpro-voice",
            env!("CARGO_BIN_EXE_cotrackpro-voice"),
        ),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze is installed (Debian package systemd; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Only complaints about our unit count: a container's own units may be noisy.
    let ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains(unit_name))
        .collect();
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}{stdout}"
    );
    assert!(
        ours.is_empty(),
        "systemd-analyze complained:\n{}",
        ours.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_service_unit_verifies() {
    verify("cotrackpro-voice.service");
}

#[test]
fn the_service_is_sandboxed_and_keeps_state() {
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/cotrackpro-voice.service"),
    )
    .unwrap();
    for line in [
        "DynamicUser=yes",
        "StateDirectory=cotrackpro-voice",
        "EnvironmentFile=/etc/cotrackpro-voice/cotrackpro-voice.env",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
}
