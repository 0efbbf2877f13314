//! The service's own Prometheus metrics (`GET /metrics`): pushes and their failures, rollouts by
//! phase, each rollout's canary weight, the config generation and how many proxies run it.

use crate::error::Error;
use crate::rollout::{Phase, Rollout};
use crate::view::Propagation;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    rollout: String,
    route: String,
}

/// The registry and its metrics.
pub struct Metrics {
    registry: Registry,
    /// `result="ok"`, or `result="failed"` with its `error`: a failed push's series carries one
    /// label more than a successful one's, so the `ok` series reads as it always has.
    pushes: Family<Vec<(&'static str, &'static str)>, Counter>,
    rollouts: Family<PhaseLabel, Gauge>,
    canary_weight: Family<RolloutLabels, Gauge>,
    generation: Gauge,
    proxies_applied: Gauge,
    proxies_total: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("meshcanary_control");
        let pushes = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        let rollouts = Family::<PhaseLabel, Gauge>::default();
        let canary_weight = Family::<RolloutLabels, Gauge>::default();
        let generation = Gauge::default();
        let proxies_applied = Gauge::default();
        let proxies_total = Gauge::default();
        registry.register(
            "pushes",
            "Filter config pushes by result (ok, failed); a failed push is labelled with its error: \
             ecds_file (writing the ECDS file), wasmplugin_missing, wasmplugin_rejected \
             (by the API server), wasmplugin_forbidden (RBAC), wasmplugin_conflict (changed \
             under every retry), wasmplugin_api (any other API or transport failure), \
             routing_objects (a route's VirtualService or DestinationRule), or the \
             error's code (internal, upstream_failed, ...) for anything else",
            pushes.clone(),
        );
        registry.register("rollouts", "Rollouts by phase", rollouts.clone());
        registry.register(
            "canary_weight_basis_points",
            "Each rollout's canary weight (10000 = 100 %)",
            canary_weight.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the filter config last saved",
            generation.clone(),
        );
        registry.register(
            "proxies_applied",
            "Proxies running the current generation",
            proxies_applied.clone(),
        );
        registry.register("proxies", "Proxies watched", proxies_total.clone());
        Metrics {
            registry,
            pushes,
            rollouts,
            canary_weight,
            generation,
            proxies_applied,
            proxies_total,
        }
    }
}

impl Metrics {
    /// Counts a push, and a failed one by [`Error::metric_label`].
    pub fn pushed(&self, outcome: std::result::Result<(), &Error>) {
        let labels = match outcome {
            Ok(()) => vec![("result", "ok")],
            Err(error) => vec![("result", "failed"), ("error", error.metric_label())],
        };
        self.pushes.get_or_create(&labels).inc();
    }

    /// The text exposition, with the gauges set from the current state.
    pub fn render(&self, rollouts: &[Rollout], propagation: &Propagation) -> String {
        for phase in Phase::ALL {
            let count = rollouts.iter().filter(|r| r.status.phase == phase).count();
            self.rollouts
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str(),
                })
                .set(count as i64);
        }
        self.canary_weight.clear();
        for rollout in rollouts {
            self.canary_weight
                .get_or_create(&RolloutLabels {
                    rollout: rollout.spec.name.clone(),
                    route: rollout.spec.route.clone(),
                })
                .set(i64::from(rollout.status.canary_weight));
        }
        self.generation.set(propagation.generation as i64);
        self.proxies_applied.set(propagation.applied as i64);
        self.proxies_total.set(propagation.total as i64);
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
