//! What platform teams deploy with, checked with their own tools (built by `infra/tools.sh`
//! from the Go module proxy): the Helm chart through `helm lint` and `helm template` with each
//! value set, what it renders (tests/python/chart_checks.py), and the Dockerfile through
//! BuildKit's own checks. The image itself is built by `infra/image.sh build` in the test
//! command, and run here on a real node (`infra/cluster.sh`).

use std::path::PathBuf;
use std::process::Command;

/// `name`'s path: from `SHAREDCARE_{NAME}` (the test command sets it), else `infra/tools.sh`.
fn tool(name: &str) -> String {
    let var = format!("SHAREDCARE_{}", name.to_ascii_uppercase().replace('-', "_"));
    if let Ok(path) = std::env::var(&var) {
        return path;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("infra/tools.sh"))
        .output()
        .expect("infra/tools.sh");
    assert!(
        out.status.success(),
        "infra/tools.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("infra/tools.sh printed no {name}"))
}

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `tests/python/{script}` with `env`; passes when it prints `{done}: all checks passed`.
fn python_checks(script: &str, env: &[(&str, String)], done: &str) {
    let python = root().join("tests/python/.venv/bin/python");
    assert!(
        python.exists(),
        "tests/python/.venv is missing: run the README's test command"
    );
    let out = Command::new(python)
        .arg(root().join("tests/python").join(script))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The figures the checks print (timings, counts), shown with --nocapture.
    for line in stdout.lines().filter(|l| !l.starts_with("ok: ")) {
        println!("{line}");
    }
    assert!(
        out.status.success() && stdout.contains(&format!("{done}: all checks passed")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chart_lints_renders_what_platform_teams_rely_on_and_refuses_bad_values() {
    let chart = root().join("charts/sharedcare").display().to_string();
    let binary = crate::harness::binary().display().to_string();
    python_checks(
        "chart_checks.py",
        &[
            ("HELM", tool("helm")),
            ("CHART", chart),
            ("BINARY", binary),
            ("PROMQL_CHECK", tool("promql-check")),
        ],
        "chart",
    );
}

#[test]
fn the_dockerfile_passes_buildkits_checks_and_the_checks_catch_mistakes() {
    let lint = tool("dockerfile-lint");
    let good = Command::new(&lint)
        .arg(root().join("Dockerfile"))
        .output()
        .expect("lint");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stdout));
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "from debian:bookworm-slim as Build\nCMD echo hi\n").expect("write");
    let out = Command::new(&lint).arg(&bad).output().expect("lint");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for rule in ["StageNameCasing", "JSONArgsRecommended", "ConsistentInstructionCasing"] {
        assert!(text.contains(rule), "{rule}: {text}");
    }
}

#[test]
fn the_cluster_prerequisites_match_what_each_service_publishes_and_consumes() {
    let k8s = root().join("infra/k8s").display().to_string();
    python_checks("k8s_checks.py", &[("K8S", k8s)], "k8s");
}

/// `var`, which the test command exports (it starts the API server and writes the CRDs).
fn exported(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the README's test command"))
}

#[test]
fn a_real_api_server_accepts_the_chart_and_the_cluster_prerequisites_and_helm_installs_upgrades_and_rolls_back() {
    let env = [
        ("KUBECTL", tool("kubectl")),
        ("HELM", tool("helm")),
        ("KUBECONFIG", exported("TEST_KUBECONFIG")),
        ("CRDS", exported("TEST_KUBE_CRDS")),
        ("CHART", root().join("charts/sharedcare").display().to_string()),
        ("K8S", root().join("infra/k8s").display().to_string()),
    ];
    python_checks("cluster_checks.py", &env, "cluster");
}

#[test]
fn pods_from_the_image_run_on_a_real_node_probed_reached_by_name_and_replaced() {
    let image = exported("TEST_IMAGE");
    let env = [
        ("KUBECTL", tool("kubectl")),
        ("HELM", tool("helm")),
        ("KUBECONFIG", exported("TEST_CLUSTER_KUBECONFIG")),
        ("CHART", root().join("charts/sharedcare").display().to_string()),
        ("IMAGE", image),
    ];
    python_checks("pod_checks.py", &env, "pods");
}

#[test]
fn helm_installs_the_chart_with_its_hooks_on_a_real_node_and_upgrades_and_rolls_back_under_load_failing_no_request() {
    let env = [
        ("KUBECTL", tool("kubectl")),
        ("HELM", tool("helm")),
        ("KUBECONFIG", exported("TEST_CLUSTER_KUBECONFIG")),
        ("CHART", root().join("charts/sharedcare").display().to_string()),
        ("IMAGE", exported("TEST_IMAGE")),
        ("PG_URL", exported("TEST_POSTGRES_URL")),
        ("CLUSTER_SH", root().join("infra/cluster.sh").display().to_string()),
        ("BINARY", crate::harness::binary().display().to_string()),
        ("NODE_DIR", crate::oidc_node::node_dir().display().to_string()),
    ];
    python_checks("install_checks.py", &env, "install");
}
