//! The controller's offline commands, run as a user runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn controller(arguments: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-controller"))
        .args(arguments)
        .output()
        .expect("failed to run sluice-controller");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn validate_accepts_the_examples() {
    for example in ["page-views", "sensor-averages"] {
        let path = repository_root().join(format!("examples/{example}/streamjob.yaml"));
        let (success, output) = controller(&["validate", "--job", path.to_str().unwrap()]);
        assert!(success, "{example}: {output}");
        assert!(
            output.contains(&format!("StreamJob {example} is valid")),
            "{output}"
        );
    }
}

#[test]
fn validate_names_the_field_and_fails() {
    let path = repository_root().join("tests/fixtures/invalid/09-window-without-key-by.yaml");
    let (success, output) = controller(&["validate", "--job", path.to_str().unwrap()]);
    assert!(!success, "an invalid manifest must fail: {output}");
    assert!(output.contains("spec.pipeline[2]"), "{output}");
    assert!(
        output.contains(sluice_crds::messages::PIPELINE_WINDOW_NEEDS_KEY_BY),
        "{output}"
    );
}

#[test]
fn crd_prints_the_committed_crd() {
    let (success, output) = controller(&["crd"]);
    assert!(success, "{output}");
    let committed =
        std::fs::read_to_string(repository_root().join("crds/streamjobs.sluice.dev.yaml")).unwrap();
    assert_eq!(output, committed);
}
