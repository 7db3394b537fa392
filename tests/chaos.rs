//! The chaos soak (bench/chaos.py) in quick mode against the binaries this run built: 35 s of
//! 1,000 requests/s while targets are killed, frozen, made to reset and to answer slowly,
//! reloaded out and in, and scaled up and down, each kind twice. It must lose no idempotent
//! request, send no wrong response, fail no POST that a target had not received, and give
//! back its memory and descriptors.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn quick_chaos_soak_loses_no_idempotent_request_and_no_memory() {
    if !common::needs_python("prometheus_client") {
        return;
    }
    let bin_dir = common::proxy_bin().parent().expect("bin dir").to_path_buf();
    common::target_bin();
    let out = std::env::temp_dir().join(format!("ringproxy-chaos-{}", std::process::id()));
    let result = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/chaos.py"))
        .args(["--quick", "--bin-dir", bin_dir.to_str().expect("utf8 path"), "--out"])
        .arg(&out)
        .output()
        .expect("python3 runs bench/chaos.py");
    let text = String::from_utf8_lossy(&result.stdout).into_owned() + &String::from_utf8_lossy(&result.stderr);
    println!("{text}");
    assert!(result.status.success(), "the soak failed:\n{text}");
    for line in ["failed idempotent requests: 0", "wrong responses: 0", "verdict: PASS"] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert!(text.contains("(0 that no target had received)"), "{text}");
    assert_eq!(text.matches("SIGKILL").count(), 2, "every kind of event ran twice:\n{text}");
    assert!(out.join("chaos.csv").exists() && out.join("events.csv").exists());
    if common::in_ci() {
        assert!(out.join("chaos.png").exists(), "CI installs matplotlib: the timeline must exist");
    }
    let _ = std::fs::remove_dir_all(out);
}
