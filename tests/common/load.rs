//! Runs the load generator (`edgerelay-load`) against a relay process it starts itself, bounded
//! by a timeout, and reads its JSON summary.

use std::time::Duration;

use serde_json::Value;

/// What one run of the generator left: whether it exited successfully, its JSON summary, and
/// its output (for assertion messages).
pub struct LoadRun {
    pub success: bool,
    pub summary: Value,
    pub output: String,
}

/// Runs the generator with `args` (after the relay and output options), killed after `limit`.
pub async fn run_load_within(args: &[&str], limit: Duration) -> LoadRun {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgerelay-load"));
    command
        .args(["--relay-bin", env!("CARGO_BIN_EXE_edgerelay"), "--quiet", "--json"])
        .arg(&json)
        .args(args)
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .expect("the load generator finishes within its bounds")
        .unwrap();
    let output_text =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let summary = match std::fs::read_to_string(&json) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(_) => Value::Null,
    };
    LoadRun { success: output.status.success(), summary, output: output_text }
}
