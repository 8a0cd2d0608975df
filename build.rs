//! Records the git commit the binary is built from, for `agentgate --version` and the
//! `agentgate_build_info` metric. A build outside a git checkout (a source tarball, a
//! container build without `.git`) says `unknown`; `AGENTGATE_COMMIT` overrides it.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=AGENTGATE_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    let commit = std::env::var("AGENTGATE_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    let commit = commit
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AGENTGATE_COMMIT={commit}");
}
