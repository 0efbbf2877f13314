//! Everything the demo runs, started in order and stopped in reverse: the upstreams, Envoy, the
//! control service, the knobs server and the traffic. Also the demo's reads of the API and its
//! calls of the CLI.

use super::console::Console;
use super::knobs::Knobs;
use super::service::Service;
use super::{Options, Pace};
use crate::load::{Client, Reply};
use crate::steady_load::{LoadCounts, SteadyLoad};
use meshcanary_control::api::rollouts::{RolloutList, RolloutView};
use meshcanary_control::api::routes::RoutesView;
use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::envoy::{self, Envoy};
use meshcanary_testkit::paths;
use meshcanary_testkit::upstream::{self, Upstream};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The route the demo releases on.
pub const ROUTE: &str = "reviews";
/// The header the demo's QA rule matches (`x-canary: always`).
pub const QA_HEADER: (&str, &str) = ("x-canary", "always");
/// The filter's response header, configured so people can see each decision.
pub const DECISION_HEADER: &str = "x-meshcanary";
/// How far back the traffic shares look.
const TRAFFIC_WINDOW: Duration = Duration::from_secs(2);

/// The filter config the demo starts from: all of `reviews` on v1, v2 at 0 %, sticky users.
pub fn initial_routes() -> FilterConfig {
    let config = serde_json::json!({
        "generation": 1,
        "responseHeader": DECISION_HEADER,
        "routes": [{
            "name": ROUTE,
            "hosts": ["*"],
            "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}],
            "sticky": {"header": "x-user-id", "salt": "demo"}
        }]
    });
    match FilterConfig::from_json(config.to_string().as_bytes()) {
        Ok(config) => config,
        Err(error) => panic!("the demo's filter config is invalid: {error}"),
    }
}

/// What the traffic got over the last seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficShare {
    /// Requests finished in the window.
    pub total: u64,
    /// Of those, by the upstream that answered.
    pub by_upstream: BTreeMap<String, u64>,
    /// Of those, 5xx answers and requests without an answer.
    pub failed: u64,
    /// Requests per second over the window.
    pub per_second: f64,
}

impl TrafficShare {
    /// `upstream`'s share in percent (0 without traffic).
    pub fn percent(&self, upstream: &str) -> f64 {
        match self.total {
            0 => 0.0,
            total => 100.0 * *self.by_upstream.get(upstream).unwrap_or(&0) as f64 / total as f64,
        }
    }

    /// The difference between two cumulative counts, `seconds` apart.
    pub fn between(old: &LoadCounts, new: &LoadCounts, seconds: f64) -> TrafficShare {
        let by_upstream: BTreeMap<String, u64> = new
            .by_upstream
            .iter()
            .map(|(name, count)| {
                let before = old.by_upstream.get(name).copied().unwrap_or(0);
                (name.clone(), count.saturating_sub(before))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        let failures = |counts: &LoadCounts| {
            counts.errors
                + counts
                    .by_status
                    .iter()
                    .filter(|(status, _)| **status >= 500)
                    .map(|(_, n)| n)
                    .sum::<u64>()
        };
        let total = new.finished.saturating_sub(old.finished);
        TrafficShare {
            total,
            by_upstream,
            failed: failures(new).saturating_sub(failures(old)),
            per_second: if seconds > 0.0 {
                total as f64 / seconds
            } else {
                0.0
            },
        }
    }
}

/// The running demo. Fields drop in order: the traffic stops first, the upstreams and the
/// demo's directory go last.
pub struct Rig {
    load: SteadyLoad,
    knobs: Knobs,
    service: Service,
    envoy: Envoy,
    upstreams: [Upstream; 3],
    client: Client,
    http: reqwest::Client,
    samples: Mutex<VecDeque<(Instant, LoadCounts)>>,
    dir: TempDir,
    /// How fast things go.
    pub pace: Pace,
}

/// Fails with a message saying which variable picks another port if `port` is taken.
fn check_port_free(port: u16, variable: &str, what: &str) -> Result<(), String> {
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(error) => Err(format!(
            "cannot use port {port} for {what}: {error}. Is another demo running? (`ss -ltnp 'sport = :{port}'` shows who has it.) Pick another port with {variable}=… (0 picks a free one)"
        )),
    }
}

impl Rig {
    /// Starts everything, saying what runs where, and waits until traffic flows.
    pub async fn start(
        options: &Options,
        pace: Pace,
        console: &mut Console,
    ) -> Result<Rig, String> {
        check_port_free(
            options.api_port,
            "DEMO_API_PORT",
            "the control service's API",
        )?;
        check_port_free(options.envoy_port, "DEMO_ENVOY_PORT", "Envoy's listener")?;
        check_port_free(
            options.admin_port,
            "DEMO_ENVOY_ADMIN_PORT",
            "Envoy's admin interface",
        )?;
        let p = console.paint();
        let dir = tempfile::Builder::new()
            .prefix("meshcanary-demo-")
            .tempdir()
            .map_err(|error| format!("cannot create the demo's directory: {error}"))?;

        let upstreams = Upstream::variants();
        let ports = upstream::ports(&upstreams);
        console.line(format!(
            "  {} demo upstreams playing reviews v1, v2, v3 on :{}, :{}, :{}",
            p.green("✓"),
            ports[0],
            ports[1],
            ports[2]
        ));

        let routes = initial_routes();
        let envoy = Envoy::start_on(ports, &routes, options.envoy_port, options.admin_port).await;
        console.line(format!(
            "  {} Envoy {} with the meshcanary filter, delivered through an ECDS file",
            p.green("✓"),
            envoy_version()
        ));
        console.line(format!(
            "      listener {}   admin {}",
            envoy.base_url, envoy.admin_url
        ));

        let service = Service::start(dir.path(), options.api_port, &envoy, &routes).await?;
        console.line(format!(
            "  {} meshcanary serve, the control service: API {}",
            p.green("✓"),
            service.base_url
        ));
        console
            .line("      reads Envoy's admin stats: is each push applied, is the canary healthy");

        let knobs = Knobs::start(&upstreams).await;
        let client = Client::new(&envoy.base_url);
        let load = SteadyLoad::start(client.clone(), pace.rate, pace.users);
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.counts().finished < 20 {
            if Instant::now() > deadline {
                return Err(format!(
                    "no traffic gets through Envoy at {} after 10 s: {:?}\nEnvoy's log: {}",
                    envoy.base_url,
                    load.counts(),
                    envoy.log_path().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        console.line(format!(
            "  {} traffic: {} requests/s from {} users, each with a sticky x-user-id",
            p.green("✓"),
            pace.rate,
            pace.users
        ));
        console.blank();
        console.line(format!(
            "  dashboard  {}   (open it to watch along)",
            p.bold(&format!("{}/", service.base_url))
        ));
        let samples = Mutex::new(VecDeque::from([(Instant::now(), load.counts())]));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
        Ok(Rig {
            load,
            knobs,
            service,
            envoy,
            upstreams,
            client,
            http,
            samples,
            dir,
            pace,
        })
    }

    /// Ids of the processes started (Envoy, the service).
    pub fn pids(&self) -> Vec<u32> {
        vec![self.envoy.pid(), self.service.pid()]
    }

    /// The demo upstream playing `name`.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// Envoy's listener, `http://127.0.0.1:<port>`.
    pub fn envoy_url(&self) -> &str {
        &self.envoy.base_url
    }

    /// The demo's directory (rollout specs, the service's state and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The traffic over the last two seconds.
    pub fn traffic(&self) -> TrafficShare {
        let now = Instant::now();
        let counts = self.load.counts();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, counts.clone()));
        while samples.len() > 2 && samples[1].0 + TRAFFIC_WINDOW <= now {
            samples.pop_front();
        }
        let (at, oldest) = &samples[0];
        TrafficShare::between(oldest, &counts, now.duration_since(*at).as_secs_f64())
    }

    /// What the traffic gets over the next `window`.
    pub async fn traffic_during(&self, window: Duration) -> TrafficShare {
        let (started, before) = (Instant::now(), self.load.counts());
        tokio::time::sleep(window).await;
        TrafficShare::between(
            &before,
            &self.load.counts(),
            started.elapsed().as_secs_f64(),
        )
    }

    /// One request through Envoy with `headers`.
    pub async fn request(&self, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.client.get("/", headers).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let url = format!("{}{path}", self.service.base_url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        if !status.is_success() {
            return Err(format!("GET {url}: {status} {body}"));
        }
        serde_json::from_str(&body).map_err(|error| format!("GET {url}: {error} in {body}"))
    }

    /// `GET /v1/rollouts/{name}`.
    pub async fn rollout(&self, name: &str) -> Result<RolloutView, String> {
        self.get(&format!("/v1/rollouts/{name}")).await
    }

    /// `GET /v1/rollouts`: the newest 100 (running ones among them: a route has one at most).
    pub async fn rollouts(&self) -> Result<Vec<RolloutView>, String> {
        self.get::<RolloutList>("/v1/rollouts")
            .await
            .map(|list| list.items)
    }

    /// `GET /v1/routes`.
    pub async fn routes(&self) -> Result<RoutesView, String> {
        self.get("/v1/routes").await
    }

    /// The stable (first) variant of the demo's route, `v1` if it cannot be read.
    pub async fn stable_variant(&self) -> String {
        self.routes()
            .await
            .ok()
            .and_then(|view| {
                let route = view.config.routes.into_iter().find(|r| r.name == ROUTE)?;
                route.variants.into_iter().next().map(|v| v.name)
            })
            .unwrap_or_else(|| "v1".into())
    }

    /// Waits until every watched proxy runs the service's current filter config.
    pub async fn wait_until_applied(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.routes().await?;
            let propagation = &view.propagation;
            if propagation.total > 0
                && propagation.applied == propagation.total
                && propagation.generation == view.config.generation
            {
                return Ok(view.config.generation);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "generation {} is not applied after {timeout:?}: {}",
                    view.config.generation, propagation.summary
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `meshcanary ARGS` against the service, showing the command and what it printed.
    /// `Err` with its output if it exits non-zero.
    pub async fn cli(&self, console: &mut Console, args: &[&str]) -> Result<String, String> {
        let p = console.paint();
        let shown: Vec<String> = args.iter().map(|arg| shell_word(arg)).collect();
        console.line(format!(
            "  {} {}",
            p.dim("$"),
            p.bold(&format!("meshcanary {}", shown.join(" ")))
        ));
        let output = tokio::process::Command::new(paths::control_bin())
            .args(args)
            .env("MESHCANARY_SERVER", &self.service.base_url)
            .env("MESHCANARY_TOKEN", &self.service.token)
            .env_remove("MESHCANARY_TOKEN_FILE")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| format!("cannot run {}: {error}", paths::control_bin().display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The commands the demo runs answer in sentences, which wrap like the demo's own.
        for line in text.lines() {
            console.para("    ", "      ", line);
        }
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "meshcanary {} failed ({}): {}",
                shown.join(" "),
                output.status,
                text.trim()
            ))
        }
    }

    /// Prints where everything is and what to try, for the time the demo stays up.
    /// `next` is a release a person can start (its canary and spec file), if there is one.
    pub fn show_urls(&self, console: &mut Console, next: Option<(String, PathBuf)>) {
        let p = console.paint();
        let api = &self.service.base_url;
        let envoy = &self.envoy.base_url;
        let bin_dir = paths::control_bin()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let lines = [
            String::new(),
            p.bold("Everything keeps running. Try it:"),
            format!("  dashboard  {}", p.bold(&format!("{api}/"))),
            format!("  API        {api}/v1/rollouts  (and /openapi.json)"),
            format!("  Envoy      {envoy}/  (admin {}/)", self.envoy.admin_url),
            format!(
                "  knobs      {}/  (errors and latency of v1, v2, v3)",
                self.knobs.base_url
            ),
            format!("  logs       {}", self.service.log_path.display()),
            format!("             {}", self.envoy.log_path().display()),
            String::new(),
            format!("  export PATH={}:$PATH", bin_dir.display()),
            format!("  export MESHCANARY_SERVER={api}"),
            format!("  export MESHCANARY_TOKEN={}", self.service.token),
            "  meshcanary rollout list".into(),
            "  meshcanary route list".into(),
            format!("  curl -i -H 'x-canary: always' {envoy}/"),
        ];
        for line in lines {
            console.line(line);
        }
        if let Some((canary, spec)) = next {
            for line in [
                format!("  # break or mend {canary} (errors=10, delayMs=700, errors=0), then release it:"),
                format!("  curl -X POST '{}/{canary}?errors=0'", self.knobs.base_url),
                format!("  meshcanary rollout create -f {}", spec.display()),
            ] {
                console.line(line);
            }
        }
        for line in [
            String::new(),
            format!(
                "The traffic goes on ({} requests/s); rollouts you start show up here.",
                self.pace.rate
            ),
            "Ctrl-C stops everything.".into(),
        ] {
            console.line(line);
        }
    }
}

/// The Envoy version, e.g. `1.40.0` (empty if the binary cannot tell).
fn envoy_version() -> String {
    envoy::version(&paths::envoy_bin())
        .map(|version| version.number)
        .unwrap_or_default()
}

/// `arg` as a shell would need it typed: quoted if it holds anything but plain characters.
fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:%@+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        for (arg, shown) in [
            ("x-canary=always", "x-canary=always"),
            ("5%,20%", "5%,20%"),
            ("pause 30s", "'pause 30s'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
        ] {
            assert_eq!(shell_word(arg), shown);
        }
    }

    #[test]
    fn traffic_shares_are_the_difference_of_two_counts() {
        let old = LoadCounts {
            finished: 100,
            by_upstream: [("v1".to_string(), 100)].into(),
            by_status: [(200, 100)].into(),
            errors: 0,
        };
        let new = LoadCounts {
            finished: 300,
            by_upstream: [("v1".to_string(), 250), ("v2".to_string(), 50)].into(),
            by_status: [(200, 290), (500, 10)].into(),
            errors: 0,
        };
        let share = TrafficShare::between(&old, &new, 2.0);
        assert_eq!(share.total, 200);
        assert_eq!(share.failed, 10);
        assert_eq!(share.per_second, 100.0);
        assert_eq!(share.percent("v1"), 75.0);
        assert_eq!(share.percent("v2"), 25.0);
        assert_eq!(share.percent("v3"), 0.0);
        assert_eq!(TrafficShare::default().percent("v1"), 0.0);
    }
}
