//! The stop/start scenario (bench/scenario.py) in quick mode: against local processes always,
//! and against the compose stack where a Docker engine answers. With CI=true the compose run
//! is required, not skipped.

mod common;

use std::path::Path;
use std::process::Command;

fn scenario(extra: &[&str]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("ringproxy-scenario-{}-{}", std::process::id(), extra.len()));
    let result = Command::new("python3")
        .arg(Path::new(root).join("bench/scenario.py"))
        .args(["--quick", "--out"])
        .arg(&out)
        .args(extra)
        .output()
        .expect("python3 runs bench/scenario.py");
    let text = String::from_utf8_lossy(&result.stdout).into_owned() + &String::from_utf8_lossy(&result.stderr);
    println!("{text}");
    assert!(result.status.success(), "the scenario failed:\n{text}");
    assert!(text.contains("failures:      0") && text.lines().any(|l| l == "OK"), "{text}");
    let mode = if extra.contains(&"--local") { "local" } else { "compose" };
    assert!(out.join(format!("scenario-{mode}.csv")).exists());
    if common::in_ci() {
        assert!(out.join(format!("scenario-{mode}.png")).exists(), "CI installs matplotlib: the plot must exist");
    }
    let _ = std::fs::remove_dir_all(out);
    text
}

#[test]
fn quick_scenario_against_local_processes_loses_nothing() {
    let bin_dir = common::proxy_bin().parent().expect("bin dir").to_path_buf();
    common::target_bin();
    let text = scenario(&["--local", "--bin-dir", bin_dir.to_str().expect("utf8 path")]);
    assert!(text.contains("target3 served again"));
}

#[test]
fn quick_scenario_against_the_compose_stack_loses_nothing() {
    let docker = Command::new("docker").arg("info").output();
    if !docker.is_ok_and(|o| o.status.success()) {
        assert!(!common::in_ci(), "CI=true: a Docker engine must answer `docker info` for the compose scenario");
        println!("NOTICE: no Docker engine answers `docker info`; the compose scenario is skipped");
        return;
    }
    scenario(&[]);
}
