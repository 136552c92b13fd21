//! Prints the StreamJob CRD, or writes it to the path given with `--write`; with
//! `--reference PATH`, writes the field reference (docs/streamjob.md) generated from it.
//!
//! `cargo run -p sluice-crds --bin crdgen -- --write crds/streamjobs.sluice.dev.yaml`

use std::process::ExitCode;

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let yaml = sluice_crds::crd::yaml();
    match arguments.as_slice() {
        [] => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        [flag, path] if flag == "--reference" => {
            match std::fs::write(path, sluice_crds::reference::markdown()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("failed to write the reference to {path}: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        [flag, path] if flag == "--write" => match std::fs::write(path, yaml) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("failed to write the CRD to {path}: {error}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: crdgen [--write PATH | --reference PATH]\nprints the StreamJob CRD YAML, or writes it (or the Markdown field reference) to PATH"
            );
            ExitCode::FAILURE
        }
    }
}
