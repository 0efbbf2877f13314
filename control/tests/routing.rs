//! `--routing-objects` against a real kube-apiserver (`meshcanary_testkit::envtest`, one per test
//! binary, namespaces per test): with bookinfo's `reviews-routing.yaml` installed, the router keeps
//! reviews' VirtualService and DestinationRule in line with the pushed variants, acting as the
//! control service's ServiceAccount with exactly the shipped RBAC, while the test plays the
//! cluster's other clients as an administrator.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use meshcanary_control::router::routing_objects::sync::{
    destination_rule_resource, virtual_service_resource, RoutingObjectsRouter,
};
use meshcanary_control::router::wasmplugin::WasmPluginRouter;
use meshcanary_control::router::TrafficRouter;
use meshcanary_core::config::FilterConfig;
use meshcanary_testkit::envtest::Envtest;
use meshcanary_testkit::install::WASMPLUGIN;
use meshcanary_testkit::interpose::Interposer;
use serde_json::{json, Value};

#[path = "support/cluster.rs"]
mod cluster;

use cluster::Cluster;

/// A config whose route `reviews` has `variants`, the first taking every request.
fn config(generation: u64, variants: &[&str]) -> FilterConfig {
    let variants: Vec<Value> = variants
        .iter()
        .enumerate()
        .map(|(index, name)| json!({"name": name, "weight": if index == 0 { 10000 } else { 0 }}))
        .collect();
    serde_json::from_value(json!({
        "generation": generation,
        "routes": [{"name": "reviews", "hosts": ["reviews"], "variants": variants}],
    }))
    .unwrap()
}

impl Cluster {
    fn virtual_services(&self, client: &kube::Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), self.apps(), &virtual_service_resource())
    }

    fn destination_rules(&self, client: &kube::Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), self.apps(), &destination_rule_resource())
    }

    async fn object(&self, api: Api<DynamicObject>, name: &str) -> Value {
        serde_json::to_value(api.get(name).await.unwrap()).unwrap()
    }

    /// reviews' VirtualService as stored.
    async fn reviews_vs(&self) -> Value {
        self.object(self.virtual_services(&self.admin), "reviews")
            .await
    }

    /// reviews' DestinationRule as stored.
    async fn reviews_dr(&self) -> Value {
        self.object(self.destination_rules(&self.admin), "reviews")
            .await
    }

    /// The router the service runs with `--routing-objects=<objects>`, as its ServiceAccount.
    fn router(&self, objects: &str) -> RoutingObjectsRouter {
        self.router_as(self.service_account.clone(), objects)
    }

    fn router_as(&self, client: kube::Client, objects: &str) -> RoutingObjectsRouter {
        RoutingObjectsRouter::new(
            Box::new(WasmPluginRouter::new(
                client.clone(),
                self.apps(),
                WASMPLUGIN,
            )),
            client,
            self.apps(),
            vec![objects.parse().unwrap()],
        )
    }
}

fn names(items: &Value) -> Vec<&str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap_or(""))
        .collect()
}

fn route<'a>(vs: &'a Value, name: &str) -> &'a Value {
    vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .find(|route| route["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {}", vs["spec"]["http"]))
}

#[tokio::test]
async fn pushes_keep_reviews_routing_in_line_with_the_variants() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let router = cluster.router("reviews");

    // A new canary v4: its subset and header route exist once the push is through.
    router
        .apply(&config(2, &["v1", "v2", "v3", "v4"]))
        .await
        .unwrap();
    let dr = cluster.reviews_dr().await;
    assert_eq!(names(&dr["spec"]["subsets"]), ["v1", "v2", "v3", "v4"]);
    assert_eq!(dr["spec"]["subsets"][3]["labels"], json!({"version": "v4"}));
    let vs = cluster.reviews_vs().await;
    assert_eq!(
        names(&vs["spec"]["http"]),
        [
            "variant-v2",
            "variant-v3",
            "variant-v1",
            "variant-v4",
            "stable"
        ]
    );
    assert_eq!(
        route(&vs, "variant-v4")["match"],
        json!([{"headers": {"x-meshcanary-variant": {"exact": "v4"}}}])
    );
    assert_eq!(
        route(&vs, "variant-v4")["route"],
        json!([{"destination": {"host": "reviews", "subset": "v4"}}])
    );
    assert_eq!(
        cluster.plugin_config().await["generation"],
        2,
        "then the filter config is pushed"
    );

    // Someone else adds a route of their own, with another field manager.
    let mut http = vs["spec"]["http"].as_array().unwrap().clone();
    let foreign = json!({"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                         "route": [{"destination": {"host": "reviews", "subset": "v3"}}], "timeout": "3s"});
    http.insert(0, foreign.clone());
    cluster
        .virtual_services(&cluster.admin)
        .patch(
            "reviews",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"spec": {"http": http}})),
        )
        .await
        .unwrap();

    // A promotion of v2: the default route follows; the foreign route stays first.
    router
        .apply(&config(3, &["v2", "v1", "v3", "v4"]))
        .await
        .unwrap();
    let vs = cluster.reviews_vs().await;
    assert_eq!(
        route(&vs, "stable")["route"],
        json!([{"destination": {"host": "reviews", "subset": "v2"}}])
    );
    assert_eq!(vs["spec"]["http"][0], foreign);

    // v3 retired: its header route goes, its subset stays (another route may use it: `jason`).
    router.apply(&config(4, &["v2", "v1", "v4"])).await.unwrap();
    let vs = cluster.reviews_vs().await;
    assert_eq!(
        names(&vs["spec"]["http"]),
        ["jason", "variant-v2", "variant-v1", "variant-v4", "stable"]
    );
    assert_eq!(vs["spec"]["http"][0], foreign);
    let dr = cluster.reviews_dr().await;
    assert_eq!(names(&dr["spec"]["subsets"]), ["v1", "v2", "v3", "v4"]);

    // Nothing to change: nothing is written.
    let versions = (
        vs["metadata"]["resourceVersion"].clone(),
        dr["metadata"]["resourceVersion"].clone(),
    );
    router.apply(&config(4, &["v2", "v1", "v4"])).await.unwrap();
    assert_eq!(
        (
            cluster.reviews_vs().await["metadata"]["resourceVersion"].clone(),
            cluster.reviews_dr().await["metadata"]["resourceVersion"].clone(),
        ),
        versions
    );

    // A route the config lacks is left alone; the push goes through.
    let ratings = cluster.router("ratings=reviews");
    ratings.apply(&config(5, &["v1"])).await.unwrap();
    assert_eq!(
        cluster.reviews_vs().await["metadata"]["resourceVersion"],
        versions.0
    );
    assert_eq!(cluster.plugin_config().await["generation"], 5);
}

#[tokio::test]
async fn the_service_account_may_touch_reviews_routing_only() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    // Another service's VirtualService and DestinationRule, as its owner made them.
    let vs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "ratings"},
        "spec": {"hosts": ["ratings"], "http": [{"name": "stable", "route": [{"destination": {"host": "ratings", "subset": "v1"}}]}]},
    }))
    .unwrap();
    let dr: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "ratings"},
        "spec": {"host": "ratings", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    }))
    .unwrap();
    cluster
        .virtual_services(&cluster.admin)
        .create(&PostParams::default(), &vs)
        .await
        .unwrap();
    cluster
        .destination_rules(&cluster.admin)
        .create(&PostParams::default(), &dr)
        .await
        .unwrap();

    let patched = cluster
        .virtual_services(&cluster.service_account)
        .patch(
            "ratings",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hosts": ["ratings", "evil"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&patched, kube::Error::Api(status) if status.code == 403),
        "{patched}"
    );

    // Pointed at them anyway, the push fails naming the object and the grant it lacks.
    let router = cluster.router("reviews=ratings");
    let error = router.apply(&config(2, &["v1", "v2"])).await.unwrap_err();
    let text = error.to_string();
    assert_eq!(error.metric_label(), "routing_objects", "{text}");
    let object = format!("DestinationRule {}/ratings", cluster.apps());
    for part in [
        object.as_str(),
        "not allowed to get",
        "get and patch on destinationrules.networking.istio.io with resourceNames [ratings]",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    assert_eq!(
        cluster.plugin_config().await,
        Value::Null,
        "the filter config is not pushed without its routing"
    );

    // Its own objects missing: the push fails naming the one to install.
    cluster
        .destination_rules(&cluster.admin)
        .delete("reviews", &DeleteParams::default())
        .await
        .unwrap();
    let error = cluster
        .router("reviews")
        .apply(&config(2, &["v1", "v2"]))
        .await
        .unwrap_err()
        .to_string();
    let missing = format!(
        "DestinationRule {}/reviews does not exist; install it first",
        cluster.apps()
    );
    assert!(error.contains(&missing), "{error}");
    assert_eq!(cluster.plugin_config().await, Value::Null);
}

#[tokio::test]
async fn a_concurrent_edit_is_kept_and_the_patch_recomputed() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let proxy = Interposer::start(cluster.installed.envtest).await;
    let client = Envtest::client_from(
        &cluster
            .installed
            .service_account_kubeconfig(Some(&proxy.url)),
    )
    .await;
    let router = cluster.router_as(client, "reviews");
    // Between our read and our write of the VirtualService, someone adds a route of their own
    // (a merge patch replaces the whole list, as ours does).
    let mut http = cluster.reviews_vs().await["spec"]["http"]
        .as_array()
        .unwrap()
        .clone();
    let foreign = json!({"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                         "route": [{"destination": {"host": "reviews", "subset": "v3"}}]});
    http.insert(0, foreign.clone());
    let admin = cluster.virtual_services(&cluster.admin);
    proxy.before_next(
        axum::http::Method::PATCH,
        "/virtualservices/",
        move || async move {
            admin
                .patch(
                    "reviews",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"http": http}})),
                )
                .await
                .unwrap();
        },
    );
    router
        .apply(&config(2, &["v1", "v2", "v3", "v4"]))
        .await
        .unwrap();

    let vs = cluster.reviews_vs().await;
    assert_eq!(
        names(&vs["spec"]["http"]),
        [
            "jason",
            "variant-v2",
            "variant-v3",
            "variant-v1",
            "variant-v4",
            "stable"
        ],
        "the concurrent edit survived and ours went on top of it"
    );
    let statuses: Vec<u16> = proxy
        .requests_to("PATCH", "/virtualservices/")
        .iter()
        .map(|request| request.status)
        .collect();
    assert_eq!(
        statuses,
        [409, 200],
        "the stale patch was refused, then redone"
    );
}

#[tokio::test]
async fn the_default_route_mirrors_during_a_mirror_step_and_not_after() {
    use meshcanary_control::rollout::engine::{apply, next, Action, Observation};
    use meshcanary_control::state::ServiceState;
    use meshcanary_control::time::Timestamp;

    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let router = cluster.router("reviews");
    // The state the service keeps, a rollout of v2 that mirrors 12.5 % for a minute first; each
    // change is pushed as the service pushes it.
    let mut state = ServiceState::new(config(1, &["v1", "v2"])).unwrap();
    let spec = serde_json::from_value(json!({
        "name": "reviews-v2", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"mirror": {"percent": 12.5, "duration": "1m"}}, {"setWeight": {"percent": 10}}],
    }))
    .unwrap();
    let t0 = Timestamp(1_000_000);
    let mut rollout = state.create_rollout(spec, t0).unwrap().clone();
    let observation = Observation::default();
    let push = |state: &mut ServiceState| {
        state.filter.generation += 1;
        state.filter.clone()
    };

    // Entering the mirror step: the default route mirrors to v2's subset at 12.5 %.
    rollout = apply(&rollout, &next(&rollout, &observation, t0), t0);
    state.put_rollout(rollout.clone()).unwrap();
    router.apply(&push(&mut state)).await.unwrap();
    let vs = cluster.reviews_vs().await;
    let stable = route(&vs, "stable");
    assert_eq!(stable["mirror"], json!({"host": "reviews", "subset": "v2"}));
    assert_eq!(stable["mirrorPercentage"], json!({"value": 12.5}));
    assert_eq!(
        stable["route"],
        json!([{"destination": {"host": "reviews", "subset": "v1"}}]),
        "clients are still served by the stable"
    );
    assert_eq!(
        cluster.plugin_config().await["routes"][0]["mirrors"],
        json!([{"name": "v2", "weight": 1250}]),
        "the filter picks the requests to copy"
    );
    // The same push again writes nothing: the stored percentage compares equal.
    let version = vs["metadata"]["resourceVersion"].clone();
    router.apply(&push(&mut state)).await.unwrap();
    assert_eq!(
        cluster.reviews_vs().await["metadata"]["resourceVersion"],
        version
    );

    // A minute later the next step (10 %) ends the mirror.
    let t1 = t0.plus(std::time::Duration::from_secs(60));
    let action = next(&rollout, &observation, t1);
    assert_eq!(action, Action::EnterStep { index: 1 });
    rollout = apply(&rollout, &action, t1);
    state.put_rollout(rollout).unwrap();
    router.apply(&push(&mut state)).await.unwrap();
    let vs = cluster.reviews_vs().await;
    let stable = route(&vs, "stable");
    assert!(stable.get("mirror").is_none(), "{stable}");
    assert!(stable.get("mirrorPercentage").is_none(), "{stable}");
    assert!(cluster.plugin_config().await["routes"][0]
        .get("mirrors")
        .is_none());
}
