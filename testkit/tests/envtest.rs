//! The harness itself: a real API server comes up, with RBAC and Istio's CRDs, and restarts.

use meshcanary_testkit::envtest::Envtest;

#[test]
fn a_private_server_starts_restarts_and_compacts() {
    let Some(envtest) = Envtest::start() else {
        return;
    };
    let crds = envtest.kubectl_ok(&[
        "get",
        "crd",
        "wasmplugins.extensions.istio.io",
        "-o",
        "name",
    ]);
    assert_eq!(
        crds.trim(),
        "customresourcedefinition.apiextensions.k8s.io/wasmplugins.extensions.istio.io"
    );
    let namespace = envtest.create_namespace("smoke");
    envtest.kubectl_ok(&[
        "create",
        "configmap",
        "c",
        "-n",
        &namespace,
        "--from-literal=a=b",
    ]);
    let before = envtest.etcd_revision();
    envtest.stop_apiserver();
    assert!(
        envtest
            .kubectl()
            .args(["get", "ns"])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    assert!(envtest.compact_etcd() >= before);
    envtest.start_apiserver();
    let value = envtest.kubectl_ok(&[
        "get",
        "configmap",
        "c",
        "-n",
        &namespace,
        "-o",
        "jsonpath={.data.a}",
    ]);
    assert_eq!(value, "b", "data survives the restart");
}
