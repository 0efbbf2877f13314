//! The Istio walkthrough (`examples/istio-bookinfo/README.md`), run as written: every `sh` block's
//! commands in order, in a copy of `envoy-config/` (the user's checkout), with `kubectl` and
//! `meshcanary` on the PATH, against a real kube-apiserver with Istio's CRDs — the manifests, the
//! Deployment's arguments and the RBAC exactly as shipped, in `meshcanary-system` and `default`.
//!
//! What a cluster would add is played by the test, and nothing else:
//! - the kubelet: two replicas of the control service start from the Deployment's own command and
//!   environment, as its ServiceAccount (TokenRequest token); only `--listen` (a free port),
//!   `--prometheus-url` (the test's Prometheus) and `--wasm` (the built module) differ;
//! - istiod and productpage's sidecar: a real Envoy with the filter, whose filter config follows the
//!   WasmPlugin's `pluginConfig` (a watch writes it into Envoy's ECDS file, as istiod sends it over
//!   ECDS), in front of three upstreams playing reviews v1–v3, scraped by a real Prometheus that
//!   labels the series as Istio's scrape of productpage's pod would (`app="productpage"`);
//! - traffic: productpage's calls to reviews, sent to that Envoy.
//!
//! Every command is in [`COMMANDS`] with what the test does with it: run it verbatim; run a
//! stand-in (a pod's `kubectl port-forward` or `exec` becomes the same request to the replica or
//! to Envoy; files from the Internet become local stand-ins); or skip it, saying why (the browser,
//! the ingress gateway, a registry). A command the table does not know fails the test, and so does
//! an entry no command uses, so the walkthrough and the test cannot drift apart.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use meshcanary_control::router::wasmplugin::wasmplugin_resource;
use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::envoy::Envoy;
use meshcanary_testkit::envtest::Envtest;
use meshcanary_testkit::install::Installed;
use meshcanary_testkit::paths;
use meshcanary_testkit::prometheus::PrometheusServer;
use meshcanary_testkit::service::ServiceProcess;
use meshcanary_testkit::upstream::Upstream;
use meshcanary_testkit::wait::eventually;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WALKTHROUGH: &str = "examples/istio-bookinfo/README.md";

/// What the test does with a command of the walkthrough.
#[derive(Debug, Clone, Copy)]
enum Treat {
    /// Run it as written (`localhost:7070`, the port-forwarded replica, is the leader's port).
    Run,
    /// Run this instead; `{envoy}`, `{admin}` and `{bookinfo}` are filled in.
    Instead(&'static str),
    /// Not run, because…
    Skip(&'static str),
}

use Treat::{Instead, Run, Skip};

/// Every command of the walkthrough, by how it starts, and its treatment.
const COMMANDS: &[(&str, Treat)] = &[
    // 1. Install the control service.
    ("printf 'token=%s\\n' \"$(openssl rand -hex 32)\" > envoy-config/istio/token.env", Run),
    ("kubectl apply -k envoy-config/istio", Run),
    ("kubectl -n meshcanary-system get pods", Run),
    // 2. Pin the module's digest.
    ("kubectl -n meshcanary-system port-forward deploy/meshcanary-control 7070 &", Skip("no pods run here: the leading replica stands in for the pod, on its own port, which replaces localhost:7070 below")),
    ("SHA=$(curl -fsS http://localhost:7070/filter/meshcanary.wasm", Run),
    ("curl -fsS http://localhost:7070/filter/meshcanary.wasm.sha256", Run),
    ("sed -i \"s/^  sha256: .*/  sha256: \\\"$SHA\\\"/\" envoy-config/istio/bookinfo/wasmplugin.yaml", Run),
    // 3. Install bookinfo with the filter.
    ("kubectl apply -n default -f https://raw.githubusercontent.com/istio/istio/release-1.27/samples/bookinfo/platform/kube/bookinfo.yaml", Instead("kubectl apply -n default -f {bookinfo}")),
    ("kubectl apply -n default -k envoy-config/istio/bookinfo", Run),
    ("kubectl -n default patch deployment productpage-v1 --patch-file envoy-config/istio/bookinfo/productpage-stats.yaml", Run),
    ("kubectl apply -n default -f https://raw.githubusercontent.com/istio/istio/release-1.27/samples/bookinfo/networking/bookinfo-gateway.yaml", Skip("the ingress gateway is not here, and the file is on the Internet")),
    ("kubectl -n istio-system port-forward svc/istio-ingressgateway 8080:80 &", Skip("no ingress gateway runs here")),
    ("export GATEWAY=localhost:8080", Run),
    ("curl -s http://$GATEWAY/productpage", Skip("bookinfo's pages are not here (no pods)")),
    ("kubectl -n default get wasmplugin reviews-canary -o jsonpath=", Run),
    ("kubectl -n default exec deploy/productpage-v1 -c istio-proxy -- \\\n  pilot-agent request GET stats/prometheus | grep '^meshcanary_'", Instead("curl -fsS {admin}/stats/prometheus | grep '^meshcanary_'")),
    // 4. The first rollout: a MeshRollout from the kustomization.
    ("kubectl apply -k examples/istio-bookinfo", Run),
    // A person watches until Ctrl-C; the test waits for the pause the watch would show, then
    // shows the row.
    ("kubectl -n meshcanary-system get mro reviews-v2 -w", Instead("kubectl -n meshcanary-system wait mro/reviews-v2 --for=jsonpath='{.status.phase}'=paused --timeout=120s && kubectl -n meshcanary-system get mro reviews-v2")),
    ("export MESHCANARY_SERVER=http://localhost:7070", Run),
    ("export MESHCANARY_TOKEN=$(sed -n 's/^token=//p' envoy-config/istio/token.env)", Run),
    ("meshcanary route list", Run),
    // A person watches until Ctrl-C; the rollout waits at its pause step meanwhile.
    ("meshcanary rollout status reviews-v2 --watch", Instead("timeout 6 meshcanary rollout status reviews-v2 --watch; test $? = 124")),
    ("while sleep 0.2; do curl -s -o /dev/null http://$GATEWAY/productpage; done", Skip("the test sends productpage's calls to reviews through the stand-in sidecar itself, all along")),
    ("meshcanary rollout resume reviews-v2", Run),
    ("meshcanary rollout abort reviews-v2", Run),
    // 5. QA.
    ("curl -s -o /dev/null -c /tmp/qa.jar", Skip("bookinfo's login page is not here")),
    ("curl -s -o /dev/null -b /tmp/qa.jar", Skip("bookinfo's pages are not here")),
    ("curl -s -o /dev/null --cookie 'meshcanary=v2' http://$GATEWAY/productpage", Instead("curl -fsS -o /dev/null --cookie 'meshcanary=v2' -H 'host: reviews:9080' {envoy}/reviews/0")),
    ("kubectl -n default exec deploy/productpage-v1 -c istio-proxy -- \\\n  pilot-agent request GET stats/prometheus | grep '^meshcanary_decisions_total'", Instead("curl -fsS {admin}/stats/prometheus | grep '^meshcanary_decisions_total' | grep 'reason=\"rule\"'")),
    ("kubectl -n default exec deploy/productpage-v1 -c productpage -- python -c", Instead("curl -fsS -D - -H 'x-canary: v2' -H 'host: reviews:9080' {envoy}/reviews/0")),
    ("meshcanary route rule add reviews --variant v2 --header end-user=alice", Run),
    // 6. Prometheus.
    ("kubectl -n istio-system port-forward svc/prometheus 9090 &", Skip("the test's Prometheus stands in; the queries below are sent to it")),
    // 7. OCI.
    ("make build", Skip("the OCI option needs a registry and oras")),
    ("cp target/wasm32-wasip1/wasm-release/meshcanary.wasm plugin.wasm", Skip("the OCI option needs a registry and oras")),
    ("cat > runtime-config.json", Skip("the OCI option needs a registry and oras")),
    ("oras ", Skip("no registry here")),
    ("tar -czf plugin.tar.gz plugin.wasm", Skip("the OCI option needs a registry and oras")),
    // 8. GitOps: the upgrade path.
    ("kubectl apply set-last-applied -n default -f envoy-config/istio/bookinfo/wasmplugin.yaml", Run),
    // 8. Releases in Git: every rollout is listed.
    ("kubectl -n meshcanary-system get mro", Run),
    // Clean up.
    ("kubectl delete -n default -k envoy-config/istio/bookinfo", Run),
    // Deleting a Namespace waits for the namespace controller, which a bare API server lacks.
    ("kubectl delete -k envoy-config/istio", Instead("kubectl delete -k envoy-config/istio --wait=false")),
];

/// The fenced blocks of a Markdown text with their language: `(language, lines)`.
fn fenced_blocks(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, usize, Vec<String>)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match (&mut current, trimmed.strip_prefix("```")) {
            (None, Some(language)) => {
                current = Some((language.trim().to_string(), indent, Vec::new()))
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => {
                if let Some((language, _, lines)) = current.take() {
                    blocks.push((language, lines));
                }
            }
            (Some((_, indent, lines)), _) => {
                lines.push(line.get(*indent..).unwrap_or(line.trim_start()).to_string())
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The commands of a shell block: continuation lines, multi-line quotes and here-documents joined;
/// comment lines dropped.
fn shell_commands(lines: &[String]) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    let mut heredoc: Option<String> = None;
    for line in lines {
        if let Some(end) = &heredoc {
            current.push('\n');
            current.push_str(line);
            if line.trim() == end {
                heredoc = None;
                commands.push(std::mem::take(&mut current));
            }
            continue;
        }
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        if let Some((_, marker)) = line.split_once("<<") {
            heredoc = Some(
                marker
                    .trim()
                    .trim_matches('\'')
                    .trim_matches('"')
                    .to_string(),
            );
            continue;
        }
        let open_quote = current.matches('"').count() % 2 == 1;
        if line.ends_with('\\') || open_quote {
            continue;
        }
        commands.push(std::mem::take(&mut current));
    }
    assert!(
        current.is_empty() && heredoc.is_none(),
        "unfinished command: {current}"
    );
    commands
}

/// The walkthrough's commands in order, and its PromQL queries.
fn walkthrough() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(paths::workspace_root().join(WALKTHROUGH)).unwrap();
    let mut commands = Vec::new();
    let mut queries = Vec::new();
    for (language, lines) in fenced_blocks(&text) {
        match language.as_str() {
            "sh" => commands.extend(shell_commands(&lines)),
            "promql" => queries.push(lines.join("\n")),
            _ => {}
        }
    }
    (commands, queries)
}

/// The table entry for `command`.
fn treatment(command: &str) -> (usize, Treat) {
    let found = COMMANDS
        .iter()
        .enumerate()
        .find(|(_, (start, _))| command.starts_with(start));
    match found {
        Some((index, (_, treat))) => (index, *treat),
        None => panic!(
            "the walkthrough has a command this test does not know; add it to COMMANDS with what \
             the test should do with it:\n{command}"
        ),
    }
}

#[test]
fn every_command_of_the_walkthrough_is_known_and_every_entry_used() {
    let (commands, queries) = walkthrough();
    let used: BTreeSet<usize> = commands.iter().map(|c| treatment(c).0).collect();
    let unused: Vec<&str> = COMMANDS
        .iter()
        .enumerate()
        .filter(|(index, _)| !used.contains(index))
        .map(|(_, (start, _))| *start)
        .collect();
    assert!(
        unused.is_empty(),
        "entries no command of the walkthrough uses: {unused:#?}"
    );
    assert!(queries.len() >= 5, "{queries:#?}");
    let heredoc = commands
        .iter()
        .find(|c| c.starts_with("cat > runtime-config.json"))
        .unwrap();
    assert!(
        heredoc.ends_with("EOF") && heredoc.contains("rootIds"),
        "{heredoc}"
    );
}

/// A shell in the user's checkout: each command runs in `bash` with the variables the earlier ones
/// exported (`set -a`), `kubectl` acting as the cluster's administrator and `meshcanary` on PATH.
struct Shell {
    dir: PathBuf,
    path: String,
    kubeconfig: PathBuf,
    state: PathBuf,
}

impl Shell {
    fn new(installed: &Installed, tools: &Path) -> Shell {
        let bin = tools.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(&installed.envtest.assets().kubectl, bin.join("kubectl"))
            .unwrap();
        std::os::unix::fs::symlink(paths::control_bin(), bin.join("meshcanary")).unwrap();
        Shell {
            dir: installed.checkout.path().to_path_buf(),
            path: format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
            kubeconfig: installed.envtest.admin_kubeconfig(),
            state: tools.join("state.sh"),
        }
    }

    /// Runs `command`; returns its exit status and output (stdout, then stderr).
    fn run(&self, command: &str) -> (i32, String) {
        let script = format!(
            "set -a\n[ -f '{state}' ] && . '{state}'\nset -o pipefail\n{command}\nstatus=$?\nexport -p > '{state}'\nexit $status\n",
            state = self.state.display()
        );
        let output = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", &self.dir)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    }
}

/// istiod's part: follows the WasmPlugin and hands its `pluginConfig` to the sidecar stand-in
/// (absent: an empty config, which is what the filter receives without one).
fn follow_wasmplugin(client: kube::Client, envoy: Arc<Envoy>) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &wasmplugin_resource());
    tokio::spawn(async move {
        let events = watcher(
            api,
            watcher::Config::default().fields("metadata.name=reviews-canary"),
        );
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let object = match event {
                Ok(Event::Apply(object) | Event::InitApply(object)) => object,
                _ => continue,
            };
            let config: FilterConfig = object
                .data
                .pointer("/spec/pluginConfig")
                .map(|config| serde_json::from_value(config.clone()).unwrap())
                .unwrap_or_default();
            envoy.push(&config);
        }
    })
}

/// productpage's calls to reviews through its sidecar, until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Traffic {
    fn start(envoy: &Envoy) -> Traffic {
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let url = envoy.url("/reviews/0");
        let (stopping, counting) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stopping.load(Ordering::SeqCst) {
                if client
                    .get(&url)
                    .header("host", "reviews:9080")
                    .send()
                    .await
                    .is_ok()
                {
                    counting.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Traffic { stop, sent }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The canary's weight in the live WasmPlugin (`None` without a pluginConfig).
async fn live_canary_weight(plugins: &Api<DynamicObject>) -> Option<u64> {
    let plugin = plugins.get("reviews-canary").await.ok()?;
    let variants = plugin
        .data
        .pointer("/spec/pluginConfig/routes/0/variants")?
        .as_array()?;
    variants.iter().find(|v| v["name"] == "v2")?["weight"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_works_as_written() {
    let Some(envtest) = Envtest::shared() else {
        return;
    };
    let (commands, queries) = walkthrough();
    // The user's checkout, with nothing installed yet (the walkthrough's first commands do that).
    let installed = Installed::prepare(envtest);
    let tools = tempfile::tempdir().unwrap();
    let shell = Shell::new(&installed, tools.path());
    let admin = envtest.admin_client().await;
    let plugins: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "default", &wasmplugin_resource());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "meshcanary-system");

    // The data plane: reviews v1–v3, productpage's sidecar (Envoy with the filter, empty config
    // until the WasmPlugin has one), Prometheus scraping it as Istio would.
    let upstreams = [
        Upstream::start("v1"),
        Upstream::start("v2"),
        Upstream::start("v3"),
    ];
    let envoy = Arc::new(
        Envoy::start(
            upstreams.each_ref().map(|u| u.port),
            &FilterConfig::default(),
        )
        .await,
    );
    let prometheus = PrometheusServer::start_labelled(
        &envoy.admin_url,
        &[("app", "productpage"), ("namespace", "default")],
    )
    .await;
    let istiod = follow_wasmplugin(admin.clone(), envoy.clone());
    let bookinfo = paths::workspace_root().join("tests/fixtures/bookinfo-standin.yaml");
    let fill = |text: &str| {
        text.replace("{envoy}", &envoy.base_url)
            .replace("{admin}", &envoy.admin_url)
            .replace("{bookinfo}", &bookinfo.display().to_string())
    };

    let mut replicas: Vec<ServiceProcess> = Vec::new();
    let mut leader_port = String::new();
    let mut traffic: Option<Traffic> = None;
    let mut ran = Vec::new();
    let mut kept_weight: Option<Option<u64>> = None;
    for command in &commands {
        let (_, treat) = treatment(command);
        // What a person does (or waits for) before this command.
        if command.starts_with("kubectl -n default get wasmplugin reviews-canary") {
            // The leader notices the new WasmPlugin at its next look (every 2 s) and writes the
            // initial config; a person reading the page takes longer than that.
            eventually(
                "the initial config is written",
                Duration::from_secs(10),
                async || {
                    live_canary_weight(&plugins)
                        .await
                        .ok_or("no pluginConfig yet".to_string())
                },
            )
            .await;
            eventually(
                "the sidecar runs generation 1",
                Duration::from_secs(10),
                async || match envoy.metric("meshcanary_config_generation", &[]).await {
                    1.0 => Ok(()),
                    other => Err(format!("generation {other}")),
                },
            )
            .await;
        }
        if command.starts_with("kubectl apply -k examples/istio-bookinfo") {
            // The person's second terminal: traffic for the analysis to judge.
            traffic = Some(Traffic::start(&envoy));
        }
        let script = match treat {
            Skip(reason) => {
                ran.push(format!("skipped: {command}\n  because {reason}"));
                continue;
            }
            Run => command.replace("localhost:7070", &format!("localhost:{leader_port}")),
            Instead(instead) => fill(instead),
        };
        let (status, output) = shell.run(&script);
        assert_eq!(
            status,
            0,
            "the walkthrough's command failed:\n$ {script}\n{output}\n{}",
            replicas
                .iter()
                .map(|r| format!("--- {}:\n{}", r.name, r.log()))
                .collect::<String>()
        );
        ran.push(format!("$ {script}\n{output}"));

        // What the command must have done, and what the cluster does next.
        if command.starts_with("kubectl apply -k envoy-config/istio") {
            // The kubelet starts the Deployment's two pods, as its ServiceAccount.
            for pod in [
                "meshcanary-control-6d9f7-a1b2c",
                "meshcanary-control-6d9f7-d3e4f",
            ] {
                let mut pod_command = installed.pod_command(pod);
                pod_command
                    .set_flag("--prometheus-url", &prometheus.base_url)
                    .set_flag("--wasm", &paths::filter_wasm().display().to_string());
                let replica = installed.run_pod(&paths::control_bin(), &pod_command, pod);
                replica.wait_ready(Duration::from_secs(20)).await.unwrap();
                replicas.push(replica);
            }
            let holder = eventually("a replica leads", Duration::from_secs(20), async || {
                leases
                    .get_opt("meshcanary-control")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|lease| lease.spec?.holder_identity)
                    .ok_or("no holder".to_string())
            })
            .await;
            let leader = replicas.iter().find(|r| r.name == holder).unwrap();
            leader_port = leader.url.rsplit(':').next().unwrap().to_string();
            // Neither the WasmPlugin nor the Role to read it yet (step 3 brings both): the leader
            // waits, says why, and writes nothing.
            let waiting = eventually(
                "the leader says what it waits for",
                Duration::from_secs(10),
                async || match leader.get("/readyz").await {
                    Some((503, text))
                        if text.contains(
                            "take-over: WasmPlugin default/reviews-canary: not allowed to read it",
                        ) =>
                    {
                        Ok(text)
                    }
                    other => Err(format!("{other:?}")),
                },
            )
            .await;
            ran.push(format!("(the leader's /readyz: {waiting})"));
        }
        if command.starts_with("kubectl -n default get wasmplugin reviews-canary") {
            assert_eq!(output.trim(), "1", "the initial config's generation");
        }
        if command.starts_with("kubectl -n default exec deploy/productpage-v1 -c istio-proxy -- \\\n  pilot-agent request GET stats/prometheus | grep '^meshcanary_'") {
            let generation = output.lines().find(|l| l.starts_with("meshcanary_config_generation"));
            assert!(generation.is_some_and(|l| l.ends_with(" 1")), "{output}");
        }
        if command.starts_with("meshcanary route list") {
            assert!(output.contains("reviews"), "{output}");
        }
        if command.starts_with("meshcanary rollout status reviews-v2 --watch") {
            assert!(
                output.contains("paused"),
                "the rollout waits at its pause step: {output}"
            );
            assert_eq!(live_canary_weight(&plugins).await, Some(1000));
        }
        if command.starts_with("meshcanary rollout resume reviews-v2") {
            eventually(
                "50 % in the WasmPlugin",
                Duration::from_secs(10),
                async || match live_canary_weight(&plugins).await {
                    Some(5000) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
            .await;
        }
        if command.starts_with("meshcanary rollout abort reviews-v2") {
            assert!(output.contains("aborted"), "{output}");
            eventually(
                "everything back to v1",
                Duration::from_secs(10),
                async || match live_canary_weight(&plugins).await {
                    Some(0) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            )
            .await;
        }
        if command.starts_with("kubectl -n default exec deploy/productpage-v1 -c istio-proxy -- \\\n  pilot-agent request GET stats/prometheus | grep '^meshcanary_decisions_total'") {
            // The cookie request counted as a rule decision for v2.
            let v2 = output.lines().find(|l| l.contains("variant=\"v2\""));
            let count = v2.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse::<f64>().ok());
            assert!(count.is_some_and(|n| n >= 1.0), "{output}");
        }
        if command.starts_with("kubectl -n default exec deploy/productpage-v1 -c productpage") {
            assert!(
                output
                    .to_lowercase()
                    .contains("x-meshcanary: v2; reason=rule"),
                "{output}"
            );
            assert!(
                output.to_lowercase().contains("x-upstream: v2"),
                "served by v2: {output}"
            );
        }
        if command.starts_with("meshcanary route rule add") {
            // Step 6: every query of the page answers from the stand-in's stats.
            for query in &queries {
                let answer = eventually(
                    &format!("PromQL {query}"),
                    Duration::from_secs(20),
                    async || {
                        let series = prometheus.query(query).await?;
                        // No config was rejected: the last query's answer is empty by design.
                        match (query.contains("rejected"), series.is_empty()) {
                            (true, true) | (false, false) => Ok(series),
                            _ => Err(format!("{series:?}")),
                        }
                    },
                )
                .await;
                ran.push(format!("PromQL {query}\n  {} series", answer.len()));
            }
            let sent = traffic
                .as_ref()
                .map_or(0, |t| t.sent.load(Ordering::SeqCst));
            assert!(
                sent > 50,
                "productpage's calls went through the sidecar: {sent}"
            );
        }
        if command.starts_with("kubectl apply -n default -k envoy-config/istio/bookinfo") {
            // Every apply after the first (section 8's) keeps the service's config.
            let weight = live_canary_weight(&plugins).await;
            if let Some(before) = kept_weight.replace(weight) {
                assert_eq!(
                    weight, before,
                    "re-applying the kustomization changed pluginConfig"
                );
            }
        }
        if command.starts_with("kubectl apply set-last-applied") {
            kept_weight = Some(live_canary_weight(&plugins).await);
        }
        if command.starts_with("kubectl -n meshcanary-system get mro reviews-v2 -w") {
            // The printer columns: the analysis passed the 10 % and the rollout holds at its
            // pause step.
            let row = output
                .lines()
                .find(|l| l.starts_with("reviews-v2"))
                .unwrap_or("");
            let columns: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(
                columns.get(1..5),
                Some(&["paused", "v2", "10%", "1"][..]),
                "{output}"
            );
        }
        if command == "kubectl -n meshcanary-system get mro" {
            // Step 4's rollout, aborted there: a resource like any other, with its status.
            let row = output
                .lines()
                .find(|l| l.starts_with("reviews-v2"))
                .unwrap_or("");
            assert!(row.contains("aborted"), "{output}");
        }
    }
    drop(traffic);
    istiod.abort();
    eprintln!("{}", ran.join("\n"));
}
