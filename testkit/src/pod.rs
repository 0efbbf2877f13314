//! The control service run as its Deployment says, without a kubelet: the container's command
//! and arguments with `$(VAR)` expanded, its environment resolved from the downward API and the
//! Secret, and the ServiceAccount's token in a kubeconfig (what the kubelet would mount).
//!
//! A test may change only what a process on a shared machine must: `--listen` (a free port
//! instead of 7070) and, for tests in namespaces of their own, the flags naming those. Every
//! change is explicit ([`PodCommand::set_flag`]) and fails if the Deployment has no such flag.

use crate::envtest::run_ok;
use crate::install::Installed;
use crate::random_hex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The control service's container in its Deployment.
pub const CONTAINER: &str = "meshcanary";

/// A container's command line and environment, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCommand {
    /// `command` then `args`, expanded.
    pub argv: Vec<String>,
    /// The container's environment.
    pub env: BTreeMap<String, String>,
}

impl PodCommand {
    /// The command of container `container` of `deployment`, for a pod called `pod_name`.
    /// `secret` reads key `key` of Secret `name` in the Deployment's namespace.
    pub fn from_deployment(
        deployment: &Value,
        container: &str,
        pod_name: &str,
        secret: impl Fn(&str, &str) -> String,
    ) -> PodCommand {
        let namespace = deployment["metadata"]["namespace"]
            .as_str()
            .expect("the Deployment's namespace");
        let spec = &deployment["spec"]["template"]["spec"];
        let container = spec["containers"]
            .as_array()
            .and_then(|containers| containers.iter().find(|c| c["name"] == container))
            .unwrap_or_else(|| panic!("no container {container} in the Deployment"));
        let mut env = BTreeMap::new();
        for variable in container["env"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().expect("an env name").to_string();
            let value = if let Some(value) = variable["value"].as_str() {
                expand(value, &env)
            } else if let Some(path) = variable.pointer("/valueFrom/fieldRef/fieldPath") {
                match path.as_str() {
                    Some("metadata.name") => pod_name.to_string(),
                    Some("metadata.namespace") => namespace.to_string(),
                    Some("spec.serviceAccountName") => spec["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string(),
                    other => panic!("env {name}: fieldRef {other:?} is not modelled here"),
                }
            } else if let Some(reference) = variable.pointer("/valueFrom/secretKeyRef") {
                secret(
                    reference["name"].as_str().expect("secretKeyRef.name"),
                    reference["key"].as_str().expect("secretKeyRef.key"),
                )
            } else {
                panic!("env {name}: {variable} is not modelled here")
            };
            env.insert(name, value);
        }
        let words = |field: &str| -> Vec<String> {
            container[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(|word| expand(word.as_str().expect("a string"), &env))
                .collect()
        };
        let mut argv = words("command");
        assert!(
            !argv.is_empty(),
            "the container sets no command (the image's entrypoint is not known here)"
        );
        argv.extend(words("args"));
        PodCommand { argv, env }
    }

    /// The value of `--name=value` (or `--name value`), if given.
    pub fn flag(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.argv.iter().enumerate().find_map(|(i, word)| {
            if let Some(value) = word.strip_prefix(&prefix) {
                Some(value)
            } else if word == name {
                self.argv.get(i + 1).map(String::as_str)
            } else {
                None
            }
        })
    }

    /// Where flag `name` is (`--name=value` or `--name value`); panics if it is not there.
    fn flag_at(&self, name: &str) -> usize {
        let prefix = format!("{name}=");
        self.argv
            .iter()
            .position(|word| word.starts_with(&prefix) || word == name)
            .unwrap_or_else(|| panic!("the Deployment passes no {name}: {:?}", self.argv))
    }

    /// Sets the value of a flag the command already has; panics if it has not.
    pub fn set_flag(&mut self, name: &str, value: &str) -> &mut PodCommand {
        let at = self.flag_at(name);
        if self.argv[at] == name {
            self.argv[at + 1] = value.to_string();
        } else {
            self.argv[at] = format!("{name}={value}");
        }
        self
    }

    /// Drops a flag (and its value) the command has; panics if it has not.
    pub fn remove_flag(&mut self, name: &str) -> &mut PodCommand {
        let at = self.flag_at(name);
        let words = if self.argv[at] == name { 2 } else { 1 };
        self.argv.drain(at..at + words);
        self
    }

    /// Adds a flag the Deployment does not pass.
    pub fn add_flag(&mut self, name: &str, value: &str) -> &mut PodCommand {
        assert!(self.flag(name).is_none(), "{name} is already passed");
        self.argv.push(format!("{name}={value}"));
        self
    }
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`, and
/// anything else is kept as written.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|inner| inner.split_once(')'))
            .filter(|(name, _)| env.contains_key(*name))
        {
            out.push_str(&env[name]);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

impl Installed<'_> {
    /// The command of the control service's pod `pod_name`, as its Deployment says, listening on
    /// a free loopback port.
    pub fn pod_command(&self, pod_name: &str) -> PodCommand {
        let envtest = self.envtest;
        let namespace = self.system.clone();
        let mut command =
            PodCommand::from_deployment(&self.deployment(), CONTAINER, pod_name, |name, key| {
                run_ok(envtest.kubectl().args([
                    "get",
                    "secret",
                    name,
                    "-n",
                    &namespace,
                    "-o",
                    &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}"),
                ]))
            });
        command.set_flag("--listen", &format!("127.0.0.1:{}", crate::free_port()));
        command
    }

    /// Starts the control service as pod `pod_name` of its Deployment, as the ServiceAccount,
    /// reaching the API server at `server` (default: directly).
    pub fn run_pod(&self, binary: &Path, command: &PodCommand, pod_name: &str) -> ServiceProcess {
        self.run_pod_via(binary, command, pod_name, None)
    }

    /// [`Installed::run_pod`] through a proxy at `server` (an `http://` URL).
    pub fn run_pod_via(
        &self,
        binary: &Path,
        command: &PodCommand,
        pod_name: &str,
        server: Option<&str>,
    ) -> ServiceProcess {
        let kubeconfig = self.service_account_kubeconfig(server);
        ServiceProcess::spawn(binary, command, &kubeconfig, pod_name, self.checkout.path())
    }
}

/// A running `meshcanary serve`; dropping it kills the process (and prints its log if the test
/// is failing).
pub struct ServiceProcess {
    child: Child,
    /// The pod name it runs as.
    pub name: String,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its log file.
    pub log_path: PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with `command.argv[1..]` and exactly `command.env`, plus `KUBECONFIG` and
    /// `RUST_LOG=info` (nothing else from this machine: no proxy settings, no in-cluster config).
    pub fn spawn(
        binary: &Path,
        command: &PodCommand,
        kubeconfig: &Path,
        name: &str,
        dir: &Path,
    ) -> ServiceProcess {
        let listen = command
            .flag("--listen")
            .expect("the command sets --listen")
            .to_string();
        let log_path = dir.join(format!("{name}-{}.log", &random_hex()[..6]));
        let log = std::fs::File::create(&log_path).expect("create the log file");
        let child = Command::new(binary)
            .args(&command.argv[1..])
            .env_clear()
            .envs(&command.env)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        ServiceProcess {
            child,
            name: name.to_string(),
            url: format!("http://{listen}"),
            log_path,
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("poll the process")
    }

    /// Waits until `GET /healthz` answers 200; panics (with the log) if the process exits or
    /// does not answer within `limit`.
    pub fn wait_healthy(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if self
                .get("/healthz")
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "{} not healthy within {limit:?}:\n{}",
            self.name,
            self.log()
        );
    }

    /// A plain `GET path` on loopback: `(status, body)`, `None` if nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let address = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let status = answer.split(' ').nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        Some((status, body.to_string()))
    }

    /// SIGTERM, as Kubernetes stops a pod; waits up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        self.wait_exit(limit)
    }

    /// SIGKILL: gone without a word (a lost node, an OOM kill).
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.wait_exit(Duration::from_secs(5))
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}",
                self.name,
                self.log_path.display(),
                self.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes() {
        let env = BTreeMap::from([("A".to_string(), "x".to_string())]);
        for (text, want) in [
            ("$(A)", "x"),
            ("--ns=$(A)/y", "--ns=x/y"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("a$", "a$"),
            ("$(A", "$(A"),
        ] {
            assert_eq!(expand(text, &env), want, "{text}");
        }
    }

    #[test]
    fn a_deployment_becomes_a_command() {
        let deployment = json!({
            "metadata": {"namespace": "sys"},
            "spec": {"template": {"spec": {"serviceAccountName": "sa", "containers": [{
                "name": "meshcanary",
                "command": ["meshcanary"],
                "args": ["serve", "--listen=0.0.0.0:7070", "--ns=$(POD_NAMESPACE)", "--id", "$(POD_NAME)"],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                    {"name": "PLAIN", "value": "in $(POD_NAMESPACE)"}
                ]
            }]}}}
        });
        let mut command =
            PodCommand::from_deployment(&deployment, "meshcanary", "pod-0", |n, k| {
                format!("{n}/{k}")
            });
        assert_eq!(
            command.argv,
            [
                "meshcanary",
                "serve",
                "--listen=0.0.0.0:7070",
                "--ns=sys",
                "--id",
                "pod-0"
            ]
        );
        assert_eq!(command.env["TOKEN"], "s/token");
        assert_eq!(command.env["PLAIN"], "in sys");
        assert_eq!(command.flag("--id"), Some("pod-0"));
        command
            .set_flag("--listen", "127.0.0.1:1")
            .set_flag("--id", "pod-1");
        assert_eq!(command.flag("--listen"), Some("127.0.0.1:1"));
        assert_eq!(command.flag("--id"), Some("pod-1"));
        command.remove_flag("--id").remove_flag("--ns");
        assert_eq!(
            command.argv,
            ["meshcanary", "serve", "--listen=127.0.0.1:1"]
        );
    }
}
