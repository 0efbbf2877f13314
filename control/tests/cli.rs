//! The `meshcanary` CLI against a real `meshcanary serve`: each test starts the service on a free
//! loopback port with its own state directory (no Envoy: without `--envoy-admin` a push counts as
//! applied once written), runs the CLI binary as a person would, and checks what it prints and
//! how it exits. Every test stops the service it started, pass or fail.

use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::service::{ServiceProcess, Standalone};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshcanary");
const TOKEN: &str = "cli-test-token-0123456789";
const ROUTES: &str = r#"{"generation":1,"routes":[{"name":"reviews","hosts":["*"],"variants":[{"name":"v1","weight":10000},{"name":"v2","weight":0}]}]}"#;

/// Environment that would make a CLI run depend on the machine it runs on (the service, started
/// by the test kit, gets none of the caller's environment).
const FOREIGN_ENV: [&str; 12] = [
    "MESHCANARY_SERVER",
    "MESHCANARY_TOKEN",
    "MESHCANARY_TOKEN_FILE",
    "MESHCANARY_ENVOY_ADMIN",
    "MESHCANARY_PROTECT_READS",
    "MESHCANARY_LISTEN",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

fn clean(command: &mut Command) -> &mut Command {
    for name in FOREIGN_ENV {
        command.env_remove(name);
    }
    command
}

/// A running `meshcanary serve` (no Envoy: a push counts as applied once written) and its
/// directory; dropping it kills the process and waits for it.
struct Service {
    _process: ServiceProcess,
    url: String,
    dir: tempfile::TempDir,
}

/// What a CLI run did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert!(self.stderr.is_empty(), "{self:#?}");
        self
    }

    #[track_caller]
    fn fails(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "{self:#?}");
        self
    }

    #[track_caller]
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

impl Service {
    /// The names of every rollout, as `rollout list -o json` gives them.
    fn rollout_names(&self) -> Vec<String> {
        self.cli(&["rollout", "list", "-o", "json"]).ok().json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["spec"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn start() -> Service {
        let dir = tempfile::tempdir().unwrap();
        let standalone = Standalone {
            binary: BIN.into(),
            dir: dir.path().to_path_buf(),
            routes: FilterConfig::from_json(ROUTES.as_bytes()).unwrap(),
            ecds_file: dir.path().join("ecds.json"),
            wasm: "/nonexistent.wasm".into(),
            stats: None,
            token: TOKEN.into(),
            port: 0,
            extra_args: Vec::new(),
        };
        // The tests are synchronous; the kit's start waits on `/readyz` asynchronously.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let process = runtime.block_on(standalone.start()).unwrap();
        Service {
            url: process.url.clone(),
            _process: process,
            dir,
        }
    }

    /// Runs the CLI against this service with the right token.
    fn cli(&self, args: &[&str]) -> Run {
        self.cli_with(args, Some(TOKEN))
    }

    fn cli_with(&self, args: &[&str], token: Option<&str>) -> Run {
        let mut command = self.command(args, token);
        command.output().unwrap().into()
    }

    fn command(&self, args: &[&str], token: Option<&str>) -> Command {
        let mut command = Command::new(BIN);
        clean(&mut command)
            .args(args)
            .env("MESHCANARY_SERVER", &self.url)
            .stdin(Stdio::null());
        if let Some(token) = token {
            command.env("MESHCANARY_TOKEN", token);
        }
        command
    }

    /// The rollout as `-o json` shows it.
    fn rollout_json(&self, name: &str) -> serde_json::Value {
        self.cli(&["rollout", "status", name, "-o", "json"])
            .ok()
            .json()
    }

    /// Waits (up to 5 s) until the engine has taken rollout `name` to `phase`.
    fn wait_phase(&self, name: &str, phase: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let rollout = self.rollout_json(name);
            if rollout["status"]["phase"] == phase {
                return rollout;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not {phase}: {rollout:#}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Waits for a spawned CLI process, killing it if it outlives `limit`.
fn finish_within(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().unwrap() {
            Some(_) => return child.wait_with_output().unwrap().into(),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let run: Run = child.wait_with_output().unwrap().into();
                panic!("the CLI did not exit within {limit:?}: {run:#?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[track_caller]
fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
}

#[test]
fn a_rollout_is_created_followed_and_steered() {
    let service = Service::start();
    let created = service
        .cli(&[
            "rollout",
            "create",
            "reviews-v2",
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--steps",
            "10%,pause,50%,pause 1h,100%",
            "--timeout",
            "2h",
        ])
        .ok();
    // The answer is the rollout as the create left it: step 1 entered, its weight pushed. Without
    // proxies to wait for, the engine then moves on to the pause at once.
    assert_eq!(
        created.stdout,
        "rollout reviews-v2 created: progressing, canary v2 at 10%, step 1/5\n"
    );
    service.wait_phase("reviews-v2", "paused");

    let list = service.cli(&["rollout", "list"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{list:#?}");
    assert_contains(lines[0], &["NAME", "PHASE", "WEIGHT", "PROXIES"]);
    let cells: Vec<&str> = lines[1]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells[..7],
        [
            "reviews-v2",
            "reviews",
            "v1 → v2",
            "paused",
            "2/5",
            "10%",
            "0/0"
        ],
        "{list:#?}"
    );

    let status = service.cli(&["rollout", "status", "reviews-v2"]).ok();
    assert_contains(
        &status.stdout,
        &[
            "Phase    paused",
            "Canary   [###...........................] 10%  (v1 has 90%)",
            "  ✓ 1  set weight 10%\n  ▶ 2  pause until resumed\n    3  set weight 50%",
            "Timeout  2h",
            "Next     `meshcanary rollout resume reviews-v2`",
            "History",
            "step 2/5: paused until resumed",
            "Propagation\n  generation 2: no proxies watched",
        ],
    );

    let resumed = service.cli(&["rollout", "resume", "reviews-v2"]).ok();
    assert!(
        resumed
            .stdout
            .starts_with("rollout reviews-v2 resumed: progressing, canary v2 at 50%"),
        "{resumed:#?}"
    );

    let set = service
        .cli(&["rollout", "set-weight", "reviews-v2", "25%"])
        .ok();
    assert!(
        set.stdout
            .starts_with("rollout reviews-v2 weight set: paused, canary v2 at 25%"),
        "{set:#?}"
    );
    let json = service.rollout_json("reviews-v2");
    assert_eq!(json["status"]["canaryWeight"], 2500);
    assert_eq!(json["status"]["phase"], "paused");
    assert_eq!(json["spec"]["timeout"], "2h");
    assert!(json["spec"].get("analysis").is_none(), "{json:#}");
    assert_eq!(json["propagation"]["summary"], "applied on 0/0 proxies");

    let set = service
        .cli(&[
            "rollout",
            "set-weight",
            "reviews-v2",
            "1250bp",
            "-o",
            "json",
        ])
        .ok();
    assert_eq!(set.json()["status"]["canaryWeight"], 1250);
    let routes = service.cli(&["route", "list"]).ok();
    assert_contains(&routes.stdout, &["variants  v1 87.5%, v2 12.5%"]);

    let aborted = service.cli(&["rollout", "abort", "reviews-v2"]).ok();
    assert!(
        aborted
            .stdout
            .starts_with("rollout reviews-v2 aborted: aborted, canary v2 at 0%"),
        "{aborted:#?}"
    );
    let deleted = service.cli(&["rollout", "delete", "reviews-v2"]).ok();
    assert_eq!(deleted.stdout, "rollout reviews-v2 deleted\n");
    let list = service.cli(&["rollout", "list", "-o", "json"]).ok();
    assert_eq!(list.json(), serde_json::json!({"items": [], "total": 0}));
    assert!(service
        .cli(&["rollout", "list"])
        .ok()
        .stdout
        .starts_with("No rollouts."));
}

#[test]
fn a_spec_file_and_progressive_rollouts_are_accepted() {
    let service = Service::start();
    let spec = service.dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"name": "from-file", "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"setWeight": {"percent": 5}}, {"pause": {}}], "autoFinish": false}"#,
    )
    .unwrap();
    let created = service
        .cli(&["rollout", "create", "-f", path(&spec), "-o", "json"])
        .ok();
    let json = created.json();
    assert_eq!(json["spec"]["name"], "from-file");
    assert_eq!(json["status"]["canaryWeight"], 500);
    service.cli(&["rollout", "abort", "from-file"]).ok();

    let created = service
        .cli(&[
            "rollout",
            "create",
            "stepwise",
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--progressive",
            "10,30,1h",
        ])
        .ok();
    assert_contains(
        &created.stdout,
        &["created: progressing, canary v2 at 10%, step 1/6"],
    );
    let status = service.cli(&["rollout", "status", "stepwise"]).ok();
    assert_contains(
        &status.stdout,
        &["▶ 2  pause 1h (59m left)", "5  set weight 30%"],
    );
}

#[test]
fn analysis_flags_are_sent_and_shown() {
    let service = Service::start();
    let create = |name: &str, analysis: &[&str]| {
        let mut args = vec![
            "rollout",
            "create",
            name,
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--steps",
            "10%,pause,100%",
        ];
        args.extend(analysis);
        service.cli(&args)
    };

    // A bad value is the CLI's to catch, naming the flag; a combination that judges nothing is
    // the service's, naming the field.
    let bad_rate = create("bad-rate", &["--min-success-rate", "120"]).fails(2);
    assert_contains(
        &bad_rate.stderr,
        &["invalid value '120' for '--min-success-rate <PERCENT>': 120 is not a percentage between 0 and 100"],
    );
    let judges_nothing = create("judges-nothing", &["--no-compare-with-stable"]).fails(1);
    assert_contains(
        &judges_nothing.stderr,
        &[
            "error: cannot create rollout judges-nothing: ",
            "judges nothing",
            "HTTP 422",
            "\n  field: analysis",
        ],
    );

    create(
        "analysed",
        &[
            "--min-success-rate",
            "99.5",
            "--max-latency",
            "250ms",
            "--latency-percentile",
            "99.9",
            "--analysis-interval",
            "1h",
            "--min-requests",
            "50",
            "--failure-limit",
            "3",
        ],
    )
    .ok();
    let json = service.rollout_json("analysed");
    assert_eq!(
        json["spec"]["analysis"],
        serde_json::json!({"interval": "1h", "minSuccessRate": 99.5, "maxLatencyMs": 250.0,
            "latencyPercentile": 99.9, "minRequests": 50, "compareWithStable": true,
            "maxPValue": 0.01, "minBaselineRequests": 20, "failureLimit": 3,
            "inconclusiveLimit": 3}),
        "{json:#}"
    );
    let status = service.cli(&["rollout", "status", "analysed"]).ok();
    assert_contains(
        &status.stdout,
        &["Analysis\n  every 1h: success rate ≥ 99.5 %, p99.9 latency ≤ 250 ms, error rate compared with stable's (p < 0.01); at least 50 canary responses a window\n  no check yet\n  failed checks 0 of 3 allowed, inconclusive in a row 0 of 3"],
    );
    assert_eq!(service.rollout_names(), ["analysed"]);
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn qa_rules_are_added_listed_and_removed() {
    let service = Service::start();
    let added = service
        .cli(&[
            "route",
            "rule",
            "add",
            "reviews",
            "--variant",
            "v2",
            "--header",
            "x-canary=always",
        ])
        .ok();
    assert_eq!(
        added.stdout,
        "rule 0 added to route reviews: header x-canary = \"always\" → v2 (config generation 2)\n"
    );
    let added = service
        .cli(&[
            "route",
            "rule",
            "add",
            "reviews",
            "--variant",
            "v2",
            "--query-present",
            "canary",
            "-o",
            "json",
        ])
        .ok();
    assert_eq!(
        added.json(),
        serde_json::json!({"index": 1, "generation": 3})
    );

    let list = service.cli(&["route", "list"]).ok();
    assert_contains(
        &list.stdout,
        &[
            "Filter config generation 3",
            "reviews\n  hosts     *\n  variants  v1 100%, v2 0%\n  QA rules\n    0  header x-canary = \"always\" → v2\n    1  query canary is present → v2",
        ],
    );
    let json = service.cli(&["route", "list", "-o", "json"]).ok().json();
    assert_eq!(
        json["config"]["routes"][0]["rules"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(json["propagation"]["total"], 0);

    let removed = service
        .cli(&["route", "rule", "remove", "reviews", "0"])
        .ok();
    assert_eq!(
        removed.stdout,
        "rule 0 removed from route reviews: header x-canary = \"always\" → v2\n"
    );
    let list = service.cli(&["route", "list"]).ok();
    assert!(!list.stdout.contains("x-canary"), "{list:#?}");
    assert_contains(&list.stdout, &["    0  query canary is present → v2"]);

    let missing = service
        .cli(&["route", "rule", "remove", "reviews", "5"])
        .fails(1);
    assert!(
        missing
            .stderr
            .starts_with("error: cannot remove rule 5 from route reviews: "),
        "{missing:#?}"
    );
    assert_contains(
        &missing.stderr,
        &["hint: list the routes and their rule numbers with `meshcanary route list`"],
    );

    let two = service
        .cli(&[
            "route",
            "rule",
            "add",
            "reviews",
            "--variant",
            "v2",
            "--header",
            "a=b",
            "--cookie",
            "c=d",
        ])
        .fails(2);
    assert_contains(&two.stderr, &["cannot be used with"]);
    let bad_variant = service
        .cli(&[
            "route",
            "rule",
            "add",
            "reviews",
            "--variant",
            "v9",
            "--header",
            "a=b",
        ])
        .fails(1);
    assert_contains(
        &bad_variant.stderr,
        &["error: cannot add a rule to route reviews", "v9"],
    );
}

#[test]
fn errors_say_what_failed_and_what_to_do() {
    let service = Service::start();
    let create = [
        "rollout",
        "create",
        "r",
        "--route",
        "reviews",
        "--stable",
        "v1",
        "--canary",
        "v2",
        "--steps",
        "10%,pause",
    ];

    let wrong = service
        .cli_with(&create, Some("not-the-token-at-all"))
        .fails(1);
    assert!(
        wrong
            .stderr
            .starts_with("error: cannot create rollout r: the bearer token is not valid"),
        "{wrong:#?}"
    );
    assert_contains(
        &wrong.stderr,
        &["HTTP 401", "hint: set MESHCANARY_TOKEN or pass --token"],
    );
    let none = service.cli_with(&create, None).fails(1);
    assert_contains(
        &none.stderr,
        &["Authorization: Bearer", "hint: set MESHCANARY_TOKEN"],
    );
    // The token file takes precedence over the wrong token in the environment.
    let token_file = service.dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut args = create.to_vec();
    args.extend(["--token-file", path(&token_file)]);
    service.cli_with(&args, Some("not-the-token-at-all")).ok();

    let taken = service.cli(&create).fails(1);
    assert_contains(
        &taken.stderr,
        &["already exists", "HTTP 409", "hint: see the rollouts"],
    );
    let missing = service.cli(&["rollout", "status", "nope"]).fails(1);
    assert_contains(
        &missing.stderr,
        &[
            "error: cannot show rollout nope: rollout nope not found",
            "hint: list the rollouts with `meshcanary rollout list`",
        ],
    );
    let invalid = service
        .cli(&[
            "rollout", "create", "Bad_Name", "--route", "reviews", "--stable", "v1", "--canary",
            "v2", "--steps", "10%",
        ])
        .fails(1);
    assert_contains(&invalid.stderr, &["HTTP 422", "\n  field: name"]);

    let bad_steps = service
        .cli(&[
            "rollout",
            "create",
            "s",
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--steps",
            "10%,50,pause soon",
        ])
        .fails(2);
    assert_contains(
        &bad_steps.stderr,
        &["item 2 \"50\": a weight needs a unit: write 50% (percent) or 50bp"],
    );
    let bad_pause = service
        .cli(&[
            "rollout",
            "create",
            "s",
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--steps",
            "10%,pause soon",
        ])
        .fails(2);
    assert_contains(
        &bad_pause.stderr,
        &["item 2 \"pause soon\": \"soon\" is not a duration"],
    );
    // A rollout without workload batches has no partition to set.
    let no_batches = service.cli(&["rollout", "partition", "r", "1"]).fails(1);
    assert_contains(
        &no_batches.stderr,
        &[
            "cannot set the batch partition of rollout r",
            "rollout r has no workloads.batches to hold after",
            "HTTP 422",
            "\n  field: batchPartition",
        ],
    );
    let bad_weight = service
        .cli(&["rollout", "set-weight", "r", "101%"])
        .fails(2);
    assert_contains(&bad_weight.stderr, &["101% is more than 100%"]);
    let bad_server = service
        .cli(&["rollout", "list", "--server", "127.0.0.1:7070"])
        .fails(2);
    assert_contains(
        &bad_server.stderr,
        &["error: --server \"127.0.0.1:7070\" is not a URL"],
    );

    // Nothing that failed was created.
    assert_eq!(service.rollout_names(), ["r"]);
}

#[test]
fn an_unreachable_service_exits_3() {
    let port = meshcanary_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let run: Run = clean(&mut Command::new(BIN))
        .args(["rollout", "list", "--server", &url])
        .output()
        .unwrap()
        .into();
    let run = run.fails(3);
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(
        run.stderr.starts_with(&format!(
            "error: cannot reach the meshcanary service at {url}: "
        )),
        "{run:#?}"
    );
    assert_contains(
        &run.stderr,
        &["; is it running? (set --server or MESHCANARY_SERVER)"],
    );
}

/// Issue 18 item 3: a port that is taken is a failure to listen, said as such, and found before
/// the state store is touched (a replica that cannot listen must not take or change anything).
#[test]
fn serve_on_a_taken_port_says_it_cannot_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let child = clean(&mut Command::new(BIN))
        .env("MESHCANARY_TOKEN", TOKEN)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .args(["serve", "--listen", &address, "--wasm"])
        .arg(dir.path().join("meshcanary.wasm"))
        .arg("--ecds-file")
        .arg(dir.path().join("ecds.json"))
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = finish_within(child, Duration::from_secs(20)).fails(1);
    assert_contains(
        &run.stderr,
        &[&format!(
            "Error: cannot listen on {address}: Address already in use"
        )],
    );
    assert!(!run.stderr.contains("state store"), "{run:#?}");
    assert!(!state.exists(), "the state store was opened: {run:#?}");
    drop(taken);
}

#[test]
fn watching_a_rollout_that_succeeds_exits_0() {
    let service = Service::start();
    service
        .cli(&[
            "rollout",
            "create",
            "quick",
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--steps",
            "10%,pause 2s,100%",
        ])
        .ok();
    let watch = service
        .command(
            &[
                "rollout",
                "status",
                "quick",
                "--watch",
                "--interval",
                "200ms",
            ],
            Some(TOKEN),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = finish_within(watch, Duration::from_secs(30)).ok();
    // Not a terminal: no screen clearing, one block per version, the first and the last state.
    assert!(!run.stdout.contains('\x1b'), "{run:#?}");
    assert_contains(
        &run.stdout,
        &[
            "Phase    progressing",
            "Phase    succeeded",
            "✓ 3  set weight 100%",
        ],
    );
    assert_eq!(run.stdout.matches("Rollout  quick").count(), 2, "{run:#?}");
    assert_eq!(
        service.rollout_json("quick")["status"]["phase"],
        "succeeded"
    );
}

#[test]
fn watching_a_rollout_that_is_aborted_exits_1() {
    let service = Service::start();
    service
        .cli(&[
            "rollout",
            "create",
            "held",
            "--route",
            "reviews",
            "--stable",
            "v1",
            "--canary",
            "v2",
            "--steps",
            "10%,pause",
        ])
        .ok();
    let watch = service
        .command(
            &[
                "rollout",
                "status",
                "held",
                "--watch",
                "--interval",
                "100ms",
                "-o",
                "json",
            ],
            Some(TOKEN),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    service.cli(&["rollout", "abort", "held"]).ok();
    let run = finish_within(watch, Duration::from_secs(30)).fails(1);
    assert!(run.stderr.is_empty(), "{run:#?}");
    // With -o json, each version is one JSON document: paused, then aborted.
    let phases: Vec<String> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter::<serde_json::Value>()
        .map(|doc| {
            doc.unwrap()["status"]["phase"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(phases, ["paused", "aborted"], "{run:#?}");
}

/// Issue 17 item 8: `rollout list` reads the API's pages. With `--limit` it shows one page and
/// the command for the next; without, it lists every rollout (from `--continue` on, if given).
#[test]
fn rollout_list_pages_through_the_api() {
    let service = Service::start();
    for name in ["r1", "r2", "r3", "r4", "r5"] {
        service
            .cli(&[
                "rollout",
                "create",
                name,
                "--route",
                "reviews",
                "--stable",
                "v1",
                "--canary",
                "v2",
                "--steps",
                "10%,pause,100%",
            ])
            .ok();
        service.cli(&["rollout", "abort", name]).ok();
    }
    let rows = |run: &Run| -> Vec<String> {
        run.stdout
            .lines()
            .skip(1)
            .filter(|line| line.starts_with('r'))
            .map(|line| line.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let next = |run: &Run| -> Option<String> {
        let last = run.stdout.lines().last()?;
        let (_, command) = last.split_once("More: ")?;
        assert!(last.starts_with("5 rollouts in all."), "{run:#?}");
        command
            .strip_prefix("meshcanary rollout list --limit 2 --continue ")
            .map(str::to_string)
    };
    let mut pages = Vec::new();
    let mut args = vec![
        "rollout".to_string(),
        "list".into(),
        "--limit".into(),
        "2".into(),
    ];
    loop {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let page = service.cli(&argv).ok();
        pages.push(rows(&page));
        match next(&page) {
            Some(token) => {
                args.truncate(4);
                args.extend(["--continue".to_string(), token]);
            }
            None => break,
        }
        assert!(pages.len() < 5, "{pages:?}");
    }
    assert_eq!(pages, [vec!["r5", "r4"], vec!["r3", "r2"], vec!["r1"]]);

    assert_eq!(service.rollout_names(), ["r5", "r4", "r3", "r2", "r1"]);
    let json = service.cli(&["rollout", "list", "-o", "json"]).ok().json();
    assert_eq!(json["total"], 5);
    assert!(json.get("continue").is_none(), "{json}");
    let all = service.cli(&["rollout", "list"]).ok();
    assert_eq!(rows(&all), ["r5", "r4", "r3", "r2", "r1"]);

    // One page as the API gives it, and the rest of the list from a token on.
    let page = service
        .cli(&["rollout", "list", "--limit", "2", "-o", "json"])
        .ok()
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let token = page["continue"].as_str().unwrap();
    let rest = service.cli(&["rollout", "list", "--continue", token]).ok();
    assert_eq!(rows(&rest), ["r3", "r2", "r1"]);

    let refused = service.cli(&["rollout", "list", "--limit", "0"]).fails(2);
    assert!(refused.stderr.contains("--limit"), "{refused:#?}");
    let refused = service
        .cli(&["rollout", "list", "--continue", "not-a-token"])
        .fails(1);
    assert!(
        refused.stderr.contains("not a continue token"),
        "{refused:#?}"
    );
}

/// `meshcanary crd` prints, offline, exactly the CRD that ships (what `make crd` writes).
#[test]
fn crd_prints_the_shipped_custom_resource_definition() {
    let output = clean(&mut Command::new(BIN))
        .arg("crd")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy-config/istio/meshrollout-crd.yaml");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        std::fs::read_to_string(&shipped).unwrap(),
        "regenerate it with `make crd`"
    );
}
