//! The shipped deployment files (`deploy/`): the Kubernetes manifests against the
//! Kubernetes OpenAPI schemas (kubernetes-validate, offline), the PrometheusRule's rules
//! through promtool and equal to the shipped rules, the ConfigMap's config through
//! `agentgate check` and equal to `deploy/kubernetes/agentgate.toml`, the manifests
//! consistent with that config, the systemd units through `systemd-analyze verify`, and
//! the binary needing nothing the distroless runtime image lacks.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::gateway::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} could not start ({e}): `make test` installs it"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A manifest as JSON (read by PyYAML, the YAML reader of the tools above).
fn manifest(name: &str) -> serde_json::Value {
    let path = root().join("deploy/kubernetes").join(name);
    let (ok, out) = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&path));
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_manifests_match_the_kubernetes_schemas() {
    let dir = root().join("deploy/kubernetes");
    let core = [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "hpa.yaml",
    ];
    let (ok, out) = run(Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .args(core.iter().map(|f| dir.join(f))));
    assert!(ok, "{out}");
    assert_eq!(
        out.matches(" passed for resource ").count(),
        core.len(),
        "{out}"
    );
}

#[test]
fn the_generated_manifests_are_up_to_date() {
    let (ok, out) = run(Command::new("python3")
        .arg(root().join("scripts/gen-deploy.py"))
        .arg("--check"));
    assert!(ok, "{out}");
    let cm = manifest("configmap.yaml");
    let toml = std::fs::read_to_string(root().join("deploy/kubernetes/agentgate.toml")).unwrap();
    assert_eq!(cm["data"]["agentgate.toml"].as_str(), Some(toml.as_str()));
}

#[test]
fn the_prometheus_rule_carries_the_shipped_rules() {
    let rule = manifest("prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, serde_json::to_string(&rule["spec"]).unwrap()).unwrap();
    // promtool reads JSON as YAML: the groups as the operator hands them to Prometheus.
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules));
    assert!(ok, "{out}");
    let (ok, shipped) = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(root().join("dashboards/prometheus/agentgate-rules.yml")));
    assert!(ok, "{shipped}");
    let shipped: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    assert_eq!(rule["spec"]["groups"], shipped["groups"]);
}

#[test]
fn the_configmap_config_passes_check_and_matches_the_manifests() {
    let config = root().join("deploy/kubernetes/agentgate.toml");
    let (ok, out) = run(Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("AGENTGATE_REDIS_URL")
        .env_remove("AGENTGATE_ADMIN_TOKEN"));
    assert!(ok, "{out}");

    let deploy = manifest("deployment.yaml");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].as_u64().unwrap())
            .unwrap()
    };
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&format!("listen = \"0.0.0.0:{}\"", port("http"))));
    assert!(text.contains(&format!("admin_listen = \"0.0.0.0:{}\"", port("admin"))));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    // SIGTERM: grace_period serving, up to grace_period more for open streams, after
    // the preStop pause; the pod's grace must cover all of it.
    let grace: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("grace_period = \"")?
                .split('s')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > 2 * grace + pause,
        "{termination} <= 2 x {grace} + {pause}"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    // The config is mounted as a folder: a subPath mount never sees ConfigMap updates.
    assert!(c["volumeMounts"][0].get("subPath").is_none());

    let service = manifest("service.yaml");
    let monitor = manifest("servicemonitor.yaml");
    assert_eq!(
        service["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["metadata"]["labels"]
    );
    let monitored = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == monitored && p["targetPort"] == "admin"));
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let pdb = manifest("pdb.yaml");
    let replicas = manifest("hpa.yaml")["spec"]["minReplicas"]
        .as_u64()
        .unwrap();
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() < replicas);
}

fn verify_unit(unit: &Path, as_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(unit)
        .unwrap()
        .replace("/usr/local/bin/agentgate", BIN);
    let path = dir.path().join(as_name);
    std::fs::write(&path, text).unwrap();
    let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(ok && out.trim().is_empty(), "{as_name}: {out}");
}

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let dir = root().join("deploy/systemd");
    verify_unit(&dir.join("agentgate.service"), "agentgate.service");
    verify_unit(&dir.join("agentgate@.service"), "agentgate@a.service");
    let text = std::fs::read_to_string(dir.join("agentgate.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitNOFILE=65536",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing");
    }
}

#[test]
fn the_binary_needs_only_what_the_runtime_image_has() {
    // gcr.io/distroless/cc has glibc and libgcc; OpenSSL is built into the binary.
    let (ok, out) = run(Command::new("ldd").arg(BIN));
    assert!(ok, "{out}");
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let lib = line.split_whitespace().next().unwrap();
        assert!(
            [
                "linux-vdso",
                "libc.so",
                "libm.so",
                "libgcc_s.so",
                "ld-linux",
                "libpthread",
                "libdl",
                "librt",
                "/lib64/ld-linux"
            ]
            .iter()
            .any(|ok| lib.contains(ok)),
            "the runtime image has no {lib}:\n{out}"
        );
    }
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(dockerfile.contains("USER nonroot"));
    assert!(dockerfile.contains("--no-default-features"));
}
