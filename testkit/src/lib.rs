//! What meshcanary's tests start around the code under test, so that every test meets the real
//! thing: a real Kubernetes API server ([`envtest`]: etcd and kube-apiserver from
//! `KUBEBUILDER_ASSETS`, RBAC on, Istio's CRDs installed), the project's own manifests installed
//! into it as a user installs them ([`install`]), the control service started with the arguments
//! and environment its Deployment gives it ([`pod`]), and a proxy that can interleave a foreign
//! write or hold back an answer between a client and the API server ([`interpose`]).
//!
//! Every process started here stops when the test process ends, however it ends: each runs under
//! a small supervisor that stops it when the pipe from the test process closes ([`supervise`]).

pub mod envtest;
pub mod install;
pub mod interpose;
pub mod pod;
pub mod supervise;
pub mod wait;

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A free TCP port on loopback (the OS picks it; free at the time of asking).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("a local address").port()
}

/// Sixteen random bytes as hex, from the kernel (tokens, unique names).
pub fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
