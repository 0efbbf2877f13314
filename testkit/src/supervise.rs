//! Processes that end with the test process.
//!
//! Rust's test harness never runs the destructors of statics, and a test process killed by a
//! signal runs none at all, so a server shared by the tests of a binary would outlive it. Each
//! process therefore runs under a small `sh` supervisor whose standard input is a pipe from the
//! test process: when that pipe closes — the test process exits, panics or is killed — the
//! supervisor stops the process (SIGTERM, then waits for it) and removes what it was told to.
//! The test process can also ask it to stop and start the process again (an API server restart).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The supervisor script. `$1`: the working directory; `$2`: a directory to remove at the end
/// ("" for none); the rest: scripts to start, in order, each logging to `<script>.log`. Commands
/// on standard input: `stop N` / `start N` (the N-th script, from 0), each answered with a line.
/// At end of input the scripts are stopped in reverse order.
const SUPERVISOR: &str = r#"
cd "$1" || exit 1
remove=$2
shift 2
count=$#
i=0
for script in "$@"; do
  eval "script_$i=\$script"
  i=$((i + 1))
done
start() {
  eval "script=\$script_$1"
  "./$script" >>"$script.log" 2>&1 </dev/null &
  eval "pid_$1=$!"
}
stop() {
  eval "pid=\${pid_$1:-}"
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null
    # Some servers drain for a minute (kube-apiserver waits for its watches): 3 s, then KILL.
    tries=0
    while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 30 ]; do sleep 0.1; tries=$((tries + 1)); done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    eval "pid_$1="
  fi
}
i=0
while [ "$i" -lt "$count" ]; do start "$i"; i=$((i + 1)); done
echo started
while read -r command n; do
  case "$command" in
    stop) stop "$n"; echo "stopped $n" ;;
    start) start "$n"; echo "started $n" ;;
    *) echo "unknown command $command" ;;
  esac
done
i=$((count - 1))
while [ "$i" -ge 0 ]; do stop "$i"; i=$((i - 1)); done
[ -n "$remove" ] && rm -rf "$remove"
exit 0
"#;

/// Writes an executable script `dir/name` that execs `program` with `args` (quoted for `sh`).
pub fn write_exec_script(dir: &Path, name: &str, program: &Path, args: &[String]) -> PathBuf {
    let mut line = String::from("#!/bin/sh\nexec ");
    line.push_str(&shell_quote(&program.display().to_string()));
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    line.push('\n');
    let path = dir.join(name);
    std::fs::write(&path, line).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    make_executable(&path);
    path
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions();
    permissions.set_mode(0o755);
    std::fs::set_permissions(path, permissions)
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `text` as one `sh` word.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Scripts running under a supervisor; dropping this (or the test process ending) stops them.
pub struct Supervised {
    child: Child,
    /// The pipe whose closing stops everything; `None` once closed.
    commands: Option<ChildStdin>,
    answers: BufReader<ChildStdout>,
    dir: PathBuf,
    scripts: Vec<String>,
}

impl Supervised {
    /// Starts `scripts` (file names in `dir`, made by [`write_exec_script`]) in order; at the end
    /// they stop in reverse order and `remove` (if any) is deleted.
    pub fn start(dir: &Path, scripts: &[&str], remove: Option<&Path>) -> Supervised {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("meshcanary-supervisor")
            .arg(dir)
            .arg(remove.map(|p| p.display().to_string()).unwrap_or_default())
            .args(scripts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sh (the process supervisor)");
        let commands = child.stdin.take().expect("the supervisor's stdin");
        let answers = BufReader::new(child.stdout.take().expect("the supervisor's stdout"));
        let mut supervised = Supervised {
            child,
            commands: Some(commands),
            answers,
            dir: dir.to_path_buf(),
            scripts: scripts.iter().map(|s| s.to_string()).collect(),
        };
        supervised.expect_answer("started");
        supervised
    }

    fn expect_answer(&mut self, want: &str) {
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .expect("read the supervisor's answer");
        assert_eq!(line.trim(), want, "the supervisor's answer");
    }

    fn index(&self, script: &str) -> usize {
        self.scripts
            .iter()
            .position(|s| s == script)
            .unwrap_or_else(|| panic!("no script {script} under this supervisor"))
    }

    fn command(&mut self, verb: &str, done: &str, script: &str) {
        let n = self.index(script);
        let commands = self.commands.as_mut().expect("the supervisor is running");
        writeln!(commands, "{verb} {n}").expect("write to the supervisor");
        self.expect_answer(&format!("{done} {n}"));
    }

    /// Stops `script` (SIGTERM, SIGKILL after 3 s) and waits until it has exited.
    pub fn stop(&mut self, script: &str) {
        self.command("stop", "stopped", script);
    }

    /// Starts `script` again.
    pub fn start_again(&mut self, script: &str) {
        self.command("start", "started", script);
    }

    /// What `script` has written so far.
    pub fn log(&self, script: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{script}.log"))).unwrap_or_default()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Closing the pipe is the signal; wait so that the next test finds the ports free.
        drop(self.commands.take());
        let _ = self.child.wait();
    }
}
