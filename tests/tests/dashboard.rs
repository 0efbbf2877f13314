//! The dashboard in a real headless browser: Debian's `chromium`, driven through `chromedriver`
//! (WebDriver). The control service runs without Envoy; a stand-in for an Envoy admin endpoint
//! reports the generation the service wrote to its ECDS file (so every weight is applied on 1/1
//! proxies) and synthetic traffic split by that config's weights, so the rollout's analysis has
//! real checks to judge and the page has real points to plot.
//!
//! The test loads the page, watches a rollout progress to 30 % and stop at a `pause` step, sees an
//! action without a token fail with the API's error, types the token, resumes, pauses, promotes
//! (two clicks) and sees each phase change in the page. It saves a screenshot to
//! `target/dashboard-screenshot.png`.
//!
//! It needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`apt-get install chromium
//! chromium-driver`; `make test` does), or `CHROMIUM_BIN` and `CHROMEDRIVER_BIN`.

use axum::routing::get;
use fantoccini::{Client, ClientBuilder, Locator};
use meshcanary_control::rollout::{Hold, Phase};
use meshcanary_core::config::FilterConfig;
use meshcanary_e2e::control::{ControlApi, ControlService, StatsSource, TOKEN};
use meshcanary_testkit::paths;
use meshcanary_testkit::process::Process;
use meshcanary_testkit::LocalServer;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long the page gets to show something.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// What headless chromium needs here: root needs `--no-sandbox`; `/dev/shm` may be small in a
/// container; nothing may reach the network.
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_and_drives_a_rollout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ecds_file = dir.path().join("ecds.json");
    let proxy = FakeProxy::start(ecds_file.clone()).await;
    let service = ControlService::start_without_envoy(
        &ecds_file,
        &routes(),
        StatsSource::EnvoyAdmin(proxy.url.clone()),
    )
    .await;
    let api = service.api();
    let browser = Browser::start(&service).await;

    api.create_rollout(&json!({
        "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}, {"pause": {"duration": "3s"}},
                  {"setWeight": {"percent": 30}}, {"pause": {}},
                  {"setWeight": {"percent": 60}}, {"pause": {"duration": "1m"}},
                  {"setWeight": {"percent": 100}}],
        "analysis": {"interval": "1s", "minSuccessRate": 98, "maxLatencyMs": 150}
    }))
    .await;

    // `/` leads to the page, which lists the rollout and follows it without a reload.
    browser.goto(&format!("{}/", api.base_url())).await;
    let url = browser.client.current_url().await.expect("current URL");
    assert_eq!(url.path(), "/dashboard", "{url}");
    let row = "#rollout-rows tr[data-rollout=\"reviews-v2\"]";
    browser
        .wait_text(&format!("{row} .col-variants"), "the rollout listed", |t| {
            t == "v1 → v2"
        })
        .await;
    browser
        .wait_text(&format!("{row} .col-weight"), "the canary at 30 %", |t| {
            t == "30 %"
        })
        .await;
    browser
        .wait_text(
            &format!("{row} .col-phase"),
            "paused at the pause step",
            |t| t == "paused",
        )
        .await;
    browser
        .wait_text(&format!("{row} .col-propagation"), "propagation", |t| {
            t == "applied on 1/1 proxies"
        })
        .await;
    browser
        .wait_text("#steps li.current", "the current step marked", |t| {
            t.contains("pause until resumed")
        })
        .await;
    // The style block ran under the page's Content-Security-Policy.
    let badge = browser.find("#detail-phase").await;
    let radius = badge.css_value("border-radius").await.expect("css value");
    assert_eq!(radius, "999px", "the page's style is not applied");

    // An action without the token: the API's 401 is shown, and nothing changed.
    browser.click("button[data-action=\"resume\"]").await;
    let error = browser
        .wait_text("#error", "the API error shown", |t| {
            t.contains("401 unauthorized")
        })
        .await;
    assert!(
        error.contains("resume reviews-v2 failed") && error.contains("enter the API token"),
        "{error}"
    );
    assert_eq!(
        api.rollout("reviews-v2").await.rollout.status.phase,
        Phase::Paused
    );

    // With the token: resume moves on to 60 %, and pause stops it there.
    browser
        .find("#token")
        .await
        .send_keys(TOKEN)
        .await
        .expect("type the token");
    browser.click("button[data-action=\"resume\"]").await;
    browser
        .wait_text("#detail-weight", "the canary at 60 %", |t| t == "60 %")
        .await;
    browser
        .wait_text("#detail-phase", "progressing again", |t| t == "progressing")
        .await;
    assert!(
        browser.find("#error").await.is_displayed().await.ok() == Some(false),
        "a successful action clears the error"
    );
    browser
        .wait_text("#timeline", "a check at 60 % in the history", |t| {
            t.contains("analysis check at 60 %")
        })
        .await;
    browser.click("button[data-action=\"pause\"]").await;
    browser
        .wait_text(&format!("{row} .col-phase"), "paused by the button", |t| {
            t == "paused"
        })
        .await;
    browser
        .wait_text("#detail-phase", "paused in the detail", |t| t == "paused")
        .await;
    let view = api.rollout("reviews-v2").await;
    assert_eq!(view.rollout.status.hold, Some(Hold::Request));
    assert_eq!(view.rollout.status.canary_weight, 6000);

    // The plots and the latest check come from the rollout's analysis.
    let checks = view.rollout.status.analysis.checks.len();
    assert!(checks >= 2, "{checks} checks");
    let plotted = browser
        .count("#chart-success circle.pt-canary")
        .await
        .min(browser.count("#chart-latency circle.pt-stable").await);
    assert!(plotted >= 2, "{plotted} points plotted of {checks} checks");
    assert_eq!(browser.count("#chart-weight path.line.canary").await, 1);
    browser
        .wait_text("#check", "the latest check", |t| {
            t.contains("canary v2") && t.contains("stable v1") && t.contains("p99 latency")
        })
        .await;
    browser
        .wait_text(
            "#timeline li[data-kind=\"event\"]",
            "the newest event first",
            |t| t.contains("paused by request"),
        )
        .await;
    let screenshot = browser.screenshot().await;
    println!("dashboard screenshot: {}", screenshot.display());

    // Promote asks for a second click, then the canary takes over.
    browser.click("button[data-action=\"promote\"]").await;
    browser
        .wait_text("button[data-action=\"promote\"]", "the confirmation", |t| {
            t == "Confirm promote?"
        })
        .await;
    browser.click("button[data-action=\"promote\"]").await;
    browser
        .wait_text(&format!("{row} .col-phase"), "succeeded", |t| {
            t == "succeeded"
        })
        .await;
    browser
        .wait_text(&format!("{row} .col-weight"), "the canary at 100 %", |t| {
            t == "100 %"
        })
        .await;
    browser.quit().await;
}

/// Issue 17 item 8: the list is read a page at a time (25 rollouts, newest first); the pager
/// moves between pages, and a rollout on another page — named in the address — is still shown
/// in detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_mirror_step_and_its_copies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ecds_file = dir.path().join("ecds.json");
    let proxy = FakeProxy::start(ecds_file.clone()).await;
    let service = ControlService::start_without_envoy(
        &ecds_file,
        &routes(),
        StatsSource::EnvoyAdmin(proxy.url.clone()),
    )
    .await;
    let api = service.api();
    api.create_rollout(&json!({
        "name": "shadowed", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"mirror": {"percent": 20}}, {"setWeight": {"percent": 10}}]
    }))
    .await;
    let browser = Browser::start(&service).await;
    browser.goto(&format!("{}/dashboard", api.base_url())).await;
    browser
        .wait_text("#steps li.current", "the mirror step marked", |t| {
            t.contains("mirror 20 % until resumed")
        })
        .await;
    let copies = browser
        .wait_text("#detail-mirror", "the copies counted", |t| {
            t.starts_with("mirroring 20 % of v1's requests to v2 — ")
                && t.contains(" answered, ")
                && !t.contains("— 0 copies")
        })
        .await;
    assert!(copies.ends_with(" 5xx"), "{copies}");
    // Past the step: the mirror is over, the copies it got stay on show.
    api.action("shadowed", "resume").await;
    browser
        .wait_text("#detail-mirror", "the mirror over", |t| {
            t.starts_with("mirrored: ")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_pages_through_many_rollouts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ecds_file = dir.path().join("ecds.json");
    let proxy = FakeProxy::start(ecds_file.clone()).await;
    let service = ControlService::start_without_envoy(
        &ecds_file,
        &routes(),
        StatsSource::EnvoyAdmin(proxy.url.clone()),
    )
    .await;
    let api = service.api();
    for i in 1..=30 {
        let name = format!("r{i:02}");
        api.create_rollout(&json!({
            "name": name, "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 10}}, {"pause": {}}]
        }))
        .await;
        api.action(&name, "abort").await;
    }
    let browser = Browser::start(&service).await;
    browser.goto(&format!("{}/dashboard", api.base_url())).await;
    let rows = "#rollout-rows tr[data-rollout]";
    browser
        .wait_text("#pager-range", "the first page", |t| {
            t == "rollouts 1–25 of 30"
        })
        .await;
    assert_eq!(browser.count(rows).await, 25);
    browser
        .wait_text(&format!("{rows}:first-child .name"), "newest first", |t| {
            t == "r30"
        })
        .await;
    assert!(!browser
        .find("#page-newer")
        .await
        .is_enabled()
        .await
        .unwrap());

    browser.click("#page-older").await;
    browser
        .wait_text("#pager-range", "the second page", |t| {
            t == "rollouts 26–30 of 30"
        })
        .await;
    assert_eq!(browser.count(rows).await, 5);
    browser
        .wait_text(
            &format!("{rows}:last-child .name"),
            "the oldest last",
            |t| t == "r01",
        )
        .await;
    assert!(!browser
        .find("#page-older")
        .await
        .is_enabled()
        .await
        .unwrap());
    browser.click("#page-newer").await;
    browser
        .wait_text("#pager-range", "the first page again", |t| {
            t == "rollouts 1–25 of 30"
        })
        .await;

    // A link to a rollout on another page shows it, while the list stays on its page.
    browser
        .goto(&format!("{}/dashboard#r01", api.base_url()))
        .await;
    browser
        .wait_text("#detail-name", "the linked rollout", |t| t == "r01")
        .await;
    browser
        .wait_text("#pager-range", "the first page", |t| {
            t == "rollouts 1–25 of 30"
        })
        .await;
    assert_eq!(
        browser
            .count("#rollout-rows tr[data-rollout=\"r01\"]")
            .await,
        0
    );
    browser.quit().await;
}

/// Route `reviews` for any host, all on v1; v2 exists at 0 %.
fn routes() -> FilterConfig {
    let config = json!({"generation": 1, "routes": [{
        "name": "reviews", "hosts": ["*"],
        "variants": [{"name": "v1", "weight": 10000}, {"name": "v2", "weight": 0}]}]});
    FilterConfig::from_json(config.to_string().as_bytes()).expect("valid routes")
}

/// Headless chromium under chromedriver, with a fresh profile; see [`Driver`] for the cleanup.
struct Browser {
    client: Client,
    driver: Driver,
    api: ControlApi,
}

impl Browser {
    async fn start(service: &ControlService) -> Browser {
        let chromium = binary("CHROMIUM_BIN", "/usr/bin/chromium");
        let mut driver = Driver::start();
        let client = driver.session(&chromium).await;
        Browser {
            client,
            driver,
            api: service.api().clone(),
        }
    }

    async fn goto(&self, url: &str) {
        if let Err(error) = self.client.goto(url).await {
            panic!("open {url}: {error}\n{}", self.driver.log());
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(error) => self.fail(&format!("no {css}: {error}")).await,
        }
    }

    async fn click(&self, css: &str) {
        if let Err(error) = self.find(css).await.click().await {
            self.fail(&format!("click {css}: {error}")).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    /// Polls the text of the element at `css` until `done` holds; returns it. Panics after
    /// [`PAGE_TIMEOUT`] with what the page and the service showed.
    async fn wait_text(&self, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        let mut last = None;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if done(text.trim()) {
                        return text.trim().to_string();
                    }
                    last = Some(text);
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "not {what} after {PAGE_TIMEOUT:?}: {css} showed {last:?}"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the whole page to `target/dashboard-screenshot.png`.
    async fn screenshot(&self) -> PathBuf {
        // WebDriver pictures the viewport: make the window as tall as the page (twice, since the
        // window's frame takes some of its height and the layout may change with the size).
        for _ in 0..2 {
            let sizes = self
                .client
                .execute(
                    "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
                    vec![],
                )
                .await
                .expect("measure the page");
            let height = sizes[0].as_u64().unwrap_or(1000) + sizes[1].as_u64().unwrap_or(0);
            let height = u32::try_from(height.clamp(800, 4000)).unwrap_or(1000);
            self.client
                .set_window_size(1400, height)
                .await
                .expect("resize the window");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = paths::workspace_root().join("target/dashboard-screenshot.png");
        std::fs::create_dir_all(path.parent().expect("target dir")).expect("target dir");
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the WebDriver session (chromium quits); Drop stops chromedriver.
    async fn quit(self) {
        let _ = self.client.clone().close().await;
    }

    async fn fail(&self, what: &str) -> ! {
        let page = self
            .client
            .execute("return document.body.innerText;", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        panic!(
            "dashboard: {what}\n--- page text:\n{page}\n--- service log:\n{}",
            self.api.log()
        );
    }
}

/// A running chromedriver. Dropping it kills chromedriver and every browser process it started
/// (they share the process group it was started in), also when a test fails.
struct Driver {
    process: Process,
    port: u16,
    /// Its log and chromium's profile (`--user-data-dir`).
    dir: TempDir,
}

impl Driver {
    fn start() -> Driver {
        let chromedriver = binary("CHROMEDRIVER_BIN", "/usr/bin/chromedriver");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = meshcanary_testkit::free_port();
        let mut command = Command::new(&chromedriver);
        command
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let process = Process::spawn(&mut command, "chromedriver").unwrap();
        Driver { process, port, dir }
    }

    /// Waits for chromedriver to listen, then starts chromium through it.
    async fn session(&mut self, chromium: &Path) -> Client {
        let port = self.port;
        let listening = self
            .process
            .wait_ready(Duration::from_secs(15), async || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(drop)
                    .map_err(|error| format!("port {port}: {error}"))
            })
            .await;
        if let Err(error) = listening {
            panic!("{error}\n{}", self.log());
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            self.dir.path().join("profile").display()
        ));
        args.push("--window-size=1400,1000".into());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
        {
            Ok(client) => client,
            Err(error) => panic!(
                "chromium did not start under chromedriver: {error}\n{}",
                self.log()
            ),
        }
    }

    /// The end of chromedriver's log (which says why chromium did not start, if it did not).
    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole process group: chromedriver, chromium and its helper processes.
        // chromedriver itself is then killed and reaped as its handle drops.
        let group = format!("-{}", self.process.pid());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
    }
}

fn binary(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "no {} (set {variable}): `apt-get install chromium chromium-driver`, or run `make test`",
        path.display()
    );
    path
}

/// Stands in for an Envoy admin endpoint: `/stats/prometheus` says the filter runs the generation
/// in the ECDS file the service wrote (as a proxy that applies it at once would), and counts
/// synthetic traffic on route `reviews`, split by that config's weights. Stopped when dropped.
struct FakeProxy {
    url: String,
    _server: LocalServer,
}

impl FakeProxy {
    async fn start(ecds_file: PathBuf) -> FakeProxy {
        let traffic = Arc::new(Mutex::new(Traffic::new()));
        let app = axum::Router::new().route(
            "/stats/prometheus",
            get(move || {
                let traffic = traffic.clone();
                let ecds_file = ecds_file.clone();
                async move {
                    let config = pushed_config(&ecds_file);
                    let mut traffic = traffic.lock().unwrap_or_else(|e| e.into_inner());
                    traffic.render(config.as_ref())
                }
            }),
        );
        let server = LocalServer::start(app).await;
        FakeProxy {
            url: server.url.clone(),
            _server: server,
        }
    }
}

/// The filter config in the ECDS file, if there is one yet.
fn pushed_config(ecds_file: &Path) -> Option<FilterConfig> {
    let text = std::fs::read_to_string(ecds_file).ok()?;
    let document: Value = serde_json::from_str(&text).ok()?;
    let value =
        document["resources"][0]["typed_config"]["config"]["configuration"]["value"].as_str()?;
    FilterConfig::from_json(value.as_bytes()).ok()
}

/// Requests per second on the route.
const RATE: f64 = 2000.0;
/// Latency bucket bounds (ms), as Envoy's defaults begin; `+Inf` follows.
const BOUNDS: [f64; 10] = [0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
/// Where in a bucket a request's latency is taken to be, for `_sum`.
const MIDDLES: [f64; 7] = [0.25, 0.75, 3.0, 7.5, 17.5, 37.5, 75.0];

/// Synthetic traffic as whole requests, so every counter only grows. Request `k` of a variant is
/// placed by the low-discrepancy sequence `k·φ mod 1` (failures by `k·√2 mod 1`), so any window's
/// shares are close to the intended ones without randomness: a check passes or fails the same way
/// on every run.
struct Traffic {
    started: Instant,
    last: Instant,
    variants: BTreeMap<String, Counts>,
    /// Copies mirrored so far (a route with `mirror`): due, sent.
    mirrored: (f64, u64),
}

#[derive(Default)]
struct Counts {
    due: f64,
    requests: u64,
    errors: u64,
    buckets: [u64; 7],
    sum_ms: f64,
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            started: Instant::now(),
            last: Instant::now(),
            variants: BTreeMap::new(),
            mirrored: (0.0, 0),
        }
    }

    fn render(&mut self, config: Option<&FilterConfig>) -> String {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        // Error rate and latency tail rise and fall over about 7 s, the same for both variants.
        let wave = ((now.duration_since(self.started).as_secs_f64() * 0.9).sin() + 1.0) / 2.0;
        let mut text = format!(
            "# TYPE meshcanary_config_generation gauge\nmeshcanary_config_generation{{}} {}\n",
            config.map_or(0, |c| c.generation)
        );
        let Some(route) = config.and_then(|c| c.routes.iter().find(|r| r.name == "reviews")) else {
            return text;
        };
        if let Some(mirror) = route.mirrors.first() {
            // As the standalone bootstrap counts them: the filter's marks and the mirror
            // cluster's requests; one copy in ten answered 5xx.
            let (due, sent) = &mut self.mirrored;
            *due += RATE * elapsed * f64::from(mirror.weight) / 10_000.0;
            *sent += *due as u64;
            *due = due.fract();
            let (sent, name) = (*sent, &mirror.name);
            text.push_str(&format!(
                "meshcanary_mirrored_total{{route=\"reviews\",variant=\"{name}\"}} {sent}\n\
                 envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"reviews-{name}-mirror\"}} {sent}\n\
                 envoy_cluster_upstream_rq_completed{{envoy_cluster_name=\"reviews-{name}-mirror\"}} {sent}\n\
                 envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",envoy_cluster_name=\"reviews-{name}-mirror\"}} {}\n",
                sent / 10
            ));
        }
        for (index, variant) in route.variants.iter().enumerate() {
            let counts = self.variants.entry(variant.name.clone()).or_default();
            counts.due += RATE * elapsed * f64::from(variant.weight) / 10_000.0;
            counts.add(index > 0, wave);
            counts.write(&mut text, &variant.name);
        }
        text
    }
}

impl Counts {
    fn add(&mut self, canary: bool, wave: f64) {
        let error_rate = 0.001 + 0.004 * wave;
        let shares = latency_shares(canary, wave);
        while self.due >= 1.0 {
            self.due -= 1.0;
            self.requests += 1;
            let k = self.requests as f64;
            if (k * std::f64::consts::SQRT_2).fract() < error_rate {
                self.errors += 1;
            }
            let mut u = (k * 0.618_033_988_749_895).fract();
            let slot = shares
                .iter()
                .position(|share| {
                    u -= share;
                    u < 0.0
                })
                .unwrap_or(shares.len() - 1);
            self.buckets[slot] += 1;
            self.sum_ms += MIDDLES[slot];
        }
    }

    fn write(&self, text: &mut String, variant: &str) {
        let labels = format!("route=\"reviews\",variant=\"{variant}\"");
        let ok = self.requests - self.errors;
        text.push_str(&format!(
            "meshcanary_requests_total{{{labels}}} {}\n\
             meshcanary_responses_total{{{labels},class=\"2xx\"}} {ok}\n\
             meshcanary_responses_total{{{labels},class=\"5xx\"}} {}\n",
            self.requests, self.errors
        ));
        let mut cumulative = 0;
        for (i, bound) in BOUNDS.iter().enumerate() {
            cumulative += self.buckets.get(i).copied().unwrap_or(0);
            text.push_str(&format!(
                "meshcanary_request_duration_ms_bucket{{{labels},le=\"{bound}\"}} {cumulative}\n"
            ));
        }
        text.push_str(&format!(
            "meshcanary_request_duration_ms_bucket{{{labels},le=\"+Inf\"}} {}\n\
             meshcanary_request_duration_ms_sum{{{labels}}} {}\n\
             meshcanary_request_duration_ms_count{{{labels}}} {}\n",
            self.requests, self.sum_ms, self.requests
        ));
    }
}

/// Shares of a variant's requests per latency bucket (up to 100 ms). The slowest 1-3 % land in
/// (25, 50] ms for stable and in (50, 100] ms for the canary, so p99 is about 30-42 ms for stable
/// and 58-84 ms for the canary, moving with `wave`, and always below the test's 150 ms limit.
fn latency_shares(canary: bool, wave: f64) -> [f64; 7] {
    let tail = 0.012 + 0.02 * wave;
    if canary {
        [0.0, 0.04, 0.36, 0.30, 0.25 - tail, 0.05, tail]
    } else {
        [0.0, 0.05, 0.40, 0.30, 0.25 - tail, tail, 0.0]
    }
}
