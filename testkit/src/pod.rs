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
use crate::service::{ServeCommand, ServiceProcess, HEALTHZ};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

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
        crate::service::flag(&self.argv, name)
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
    /// reaching the API server directly. Not waited for: see [`ServiceProcess::wait_ready`].
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
        let serve = command.serve_command(binary, &kubeconfig, pod_name, self.checkout.path());
        ServiceProcess::spawn(serve).unwrap_or_else(|error| panic!("{error}"))
    }
}

impl PodCommand {
    /// The service `binary` with `argv[1..]` and exactly `env`, plus `KUBECONFIG` and
    /// `RUST_LOG=info` (nothing else from this machine: no proxy settings, no in-cluster config),
    /// run in `dir` as pod `name`. A replica that does not lead is never ready, so it counts as
    /// started once `/healthz` answers.
    pub fn serve_command(
        &self,
        binary: &Path,
        kubeconfig: &Path,
        name: &str,
        dir: &Path,
    ) -> ServeCommand {
        let mut env = self.env.clone();
        env.insert("KUBECONFIG".into(), kubeconfig.display().to_string());
        env.insert("RUST_LOG".into(), "info".into());
        ServeCommand {
            binary: binary.to_path_buf(),
            args: self.argv[1..].to_vec(),
            env,
            dir: dir.to_path_buf(),
            log: dir.join(format!("{name}-{}.log", &random_hex()[..6])),
            name: name.to_string(),
            ready_path: HEALTHZ,
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
        // Run as a pod: the arguments after the program, the container's environment plus only
        // the kubeconfig and the log level, started once `/healthz` answers.
        let serve = command.serve_command(
            Path::new("/bin/mc"),
            Path::new("/k/config"),
            "pod-1",
            Path::new("/w"),
        );
        assert_eq!(serve.args, ["serve", "--listen=127.0.0.1:1"]);
        let names: Vec<&str> = serve.env.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "KUBECONFIG",
                "PLAIN",
                "POD_NAME",
                "POD_NAMESPACE",
                "RUST_LOG",
                "TOKEN"
            ]
        );
        assert_eq!(serve.env["KUBECONFIG"], "/k/config");
        assert_eq!(serve.ready_path, HEALTHZ);
        let log = serve.log.display().to_string();
        assert!(
            log.starts_with("/w/pod-1-") && log.ends_with(".log"),
            "{log}"
        );
    }
}
