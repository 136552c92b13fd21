//! What the controller's watches know of the children, so a reconcile sends only what
//! changes. Each child is applied with the annotation `sluice.dev/applied-hash`, the hash
//! of the object as built; a reconcile skips the apply of a child whose cached copy carries
//! the hash of what it would apply and that nobody else has written since ([`in_sync`]).
//! A steady-state reconcile is then only a status decision, made from the cached
//! StatefulSet.
//!
//! The watches also trigger the reconciles, but only on changes that matter
//! ([`Signature`]): a PodDisruptionBudget's status or a StatefulSet's unrelated status
//! fields reconcile nothing.
//!
//! The cached copies keep only what the decisions read ([`Cached`]): with thousands of jobs
//! the rest (labels, owner references, the pod template, field sets) was most of the
//! controller's memory. The watch events that trigger reconciles stay whole.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store, store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::names::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER};

/// The cached children of the jobs of one watch scope (a namespace, or all).
#[derive(Clone)]
pub struct ChildCache {
    /// The worker StatefulSets (status included, pod template left out).
    pub workers: Store<StatefulSet>,
    /// The admin-token Secrets (only the controller's, by label).
    pub admin_tokens: Store<Secret>,
    /// The job ConfigMaps.
    pub job_configs: Store<PartialObjectMeta<ConfigMap>>,
    /// The headless Services.
    pub services: Store<PartialObjectMeta<Service>>,
    /// The PodDisruptionBudgets.
    pub disruption_budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    /// The workers' ServiceAccounts.
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    ready: Arc<AtomicBool>,
}

impl Default for ChildCache {
    /// Empty stores that never fill (tests fill them through [`ChildCache::filled`]).
    fn default() -> Self {
        Self {
            workers: store().0,
            admin_tokens: store().0,
            job_configs: store().0,
            services: store().0,
            disruption_budgets: store().0,
            service_accounts: store().0,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl ChildCache {
    /// A cache over these stores, not ready until each has had its first list.
    pub fn new(
        workers: Store<StatefulSet>,
        admin_tokens: Store<Secret>,
        job_configs: Store<PartialObjectMeta<ConfigMap>>,
        services: Store<PartialObjectMeta<Service>>,
        disruption_budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
        service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    ) -> Self {
        Self {
            workers,
            admin_tokens,
            job_configs,
            services,
            disruption_budgets,
            service_accounts,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Waits until every store has had its first list, so the first reconciles after a
    /// start do not apply every child again. (A store's readiness wakes only one waiter:
    /// ask again every 100 ms.)
    pub async fn wait_until_ready(&self) {
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        async fn wait<K>(store: &Store<K>)
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + Hash + Clone,
        {
            loop {
                match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => return,
                    // The watch ended (shutdown): nothing more will come.
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
        }
        wait(&self.workers).await;
        wait(&self.admin_tokens).await;
        wait(&self.job_configs).await;
        wait(&self.services).await;
        wait(&self.disruption_budgets).await;
        wait(&self.service_accounts).await;
        self.ready.store(true, Ordering::Release);
    }
}

/// The cached copy of `name` in `namespace`, if the watch has seen it.
pub fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// The hash of `object` as built, as 16 hex digits: what [`APPLIED_HASH_ANNOTATION`]
/// carries. The JSON form of the k8s-openapi types is stable (struct order, sorted maps).
pub fn applied_hash<K: Serialize>(object: &K) -> String {
    let bytes = serde_json::to_vec(object).expect("a Kubernetes object always serializes");
    format!("{:016x}", xxh3_64(&bytes))
}

/// Puts the hash of `object` in its annotations; returns it.
pub fn stamp<K: Resource + Serialize>(object: &mut K) -> String {
    object.annotations_mut().remove(APPLIED_HASH_ANNOTATION);
    let hash = applied_hash(object);
    object
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_string(), hash.clone());
    hash
}

/// Whether a child whose cached metadata is `meta` already is what would be applied
/// (`hash`): it carries that hash, and no other writer (a `kubectl edit`, a `kubectl
/// scale`, another apply) has changed it since the controller's last apply. Status writes
/// (the StatefulSet controller's, the disruption controller's) do not count.
pub fn in_sync(meta: &ObjectMeta, hash: &str) -> bool {
    let stamped = meta
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(APPLIED_HASH_ANNOTATION))
        .is_some_and(|found| found == hash);
    if !stamped || meta.deletion_timestamp.is_some() {
        return false;
    }
    let entries = meta.managed_fields.as_deref().unwrap_or_default();
    let ours = entries.iter().find(|entry| {
        entry.manager.as_deref() == Some(FIELD_MANAGER)
            && entry.operation.as_deref() == Some("Apply")
            && entry.subresource.as_deref().unwrap_or_default().is_empty()
    });
    let Some(ours) = ours.and_then(|entry| entry.time.as_ref()) else {
        return false;
    };
    entries
        .iter()
        .filter(|entry| {
            !(entry.manager.as_deref() == Some(FIELD_MANAGER)
                && entry.operation.as_deref() == Some("Apply"))
                && entry.subresource.as_deref() != Some("status")
        })
        // One-second resolution: a write in the same second as ours counts as later.
        .all(|entry| entry.time.as_ref().is_some_and(|time| time.0 < ours.0))
}

/// Leaves out of a cached StreamJob what no decision reads: the field sets of
/// `managedFields` (who wrote and when is kept) and `last-applied-configuration`. (The
/// children's copies keep less: [`Cached`].)
pub fn trim_meta(meta: &mut ObjectMeta) {
    if let Some(entries) = meta.managed_fields.as_mut() {
        for entry in entries {
            entry.fields_v1 = None;
        }
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A child as the cache keeps it: only what the decisions read. They are [`in_sync`] (the
/// applied hash, deletion, who wrote the object and when), `WorkerCounts` (the
/// StatefulSet's replicas, generation and status counts), the admin token, and the storage
/// class of the state volumes. Built field by field, so whatever the API server adds is
/// left out; the reconcile tests decide from such copies (`reconcile/mock_api.rs`).
pub trait Cached {
    /// The copy the cache keeps.
    fn cached_copy(&self) -> Self;
}

/// The metadata [`in_sync`] and `WorkerCounts` read: no labels, owner references (the
/// triggers read them off the watch events), uid or resource version; of `managedFields`
/// who wrote the object, how and when, without the status writers, which [`in_sync`]
/// passes over.
fn cached_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp.clone(),
        annotations: meta
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(APPLIED_HASH_ANNOTATION))
            .map(|hash| BTreeMap::from([(APPLIED_HASH_ANNOTATION.to_string(), hash.clone())])),
        managed_fields: meta.managed_fields.as_ref().map(|entries| {
            entries
                .iter()
                .filter(|entry| entry.subresource.as_deref() != Some("status"))
                .map(|entry| ManagedFieldsEntry {
                    manager: entry.manager.clone(),
                    operation: entry.operation.clone(),
                    subresource: entry.subresource.clone(),
                    time: entry.time.clone(),
                    ..ManagedFieldsEntry::default()
                })
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

impl Cached for StatefulSet {
    /// Also its replicas, the status counts and, of its volume claim templates, their names
    /// and storage classes (no pod template, selector or conditions).
    fn cached_copy(&self) -> Self {
        let claims = self.spec.volume_claim_templates.as_ref().map(|claims| {
            claims
                .iter()
                .map(|claim| PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: claim.metadata.name.clone(),
                        ..ObjectMeta::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        storage_class_name: claim
                            .spec
                            .as_ref()
                            .and_then(|spec| spec.storage_class_name.clone()),
                        ..PersistentVolumeClaimSpec::default()
                    }),
                    status: None,
                })
                .collect()
        });
        StatefulSet {
            metadata: cached_meta(&self.metadata),
            spec: StatefulSetSpec {
                replicas: self.spec.replicas,
                volume_claim_templates: claims,
                ..StatefulSetSpec::default()
            },
            status: self.status.as_ref().map(|status| StatefulSetStatus {
                observed_generation: status.observed_generation,
                replicas: status.replicas,
                ready_replicas: status.ready_replicas,
                updated_replicas: status.updated_replicas,
                current_revision: status.current_revision.clone(),
                update_revision: status.update_revision.clone(),
                ..StatefulSetStatus::default()
            }),
        }
    }
}

impl Cached for Secret {
    /// Also its data (the admin token).
    fn cached_copy(&self) -> Self {
        Secret {
            metadata: cached_meta(&self.metadata),
            data: self.data.clone(),
            ..Secret::default()
        }
    }
}

impl<K> Cached for PartialObjectMeta<K> {
    fn cached_copy(&self) -> Self {
        PartialObjectMeta {
            types: None,
            metadata: cached_meta(&self.metadata),
            _phantom: std::marker::PhantomData,
        }
    }
}

/// Caches in `writer` the [`Cached`] copy of each object the watch shows, and passes the
/// events on whole (the triggers read the owner references).
pub fn reflect_cached<K, S>(
    events: S,
    mut writer: Writer<K>,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Cached + Clone + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    use futures::TryStreamExt;
    events.inspect_ok(move |event| {
        let copy = match event {
            watcher::Event::Apply(object) => watcher::Event::Apply(object.cached_copy()),
            watcher::Event::Delete(object) => watcher::Event::Delete(object.cached_copy()),
            watcher::Event::InitApply(object) => watcher::Event::InitApply(object.cached_copy()),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        };
        writer.apply_watcher_event(&copy);
    })
}

/// What about a child should reconcile its job when it changes.
pub trait Signature {
    /// A hash of the parts that matter.
    fn signature(&self) -> u64;
}

fn hash_meta(meta: &ObjectMeta, hasher: &mut Xxh3) {
    meta.generation.hash(hasher);
    meta.deletion_timestamp.is_some().hash(hasher);
    meta.annotations
        .as_ref()
        .and_then(|annotations| annotations.get(APPLIED_HASH_ANNOTATION))
        .hash(hasher);
    meta.labels.hash(hasher);
    meta.owner_references
        .as_ref()
        .map(|owners| owners.iter().map(|owner| &owner.uid).collect::<Vec<_>>())
        .hash(hasher);
    // Who wrote the object and when (a hand edit), leaving out status writers.
    for entry in meta.managed_fields.as_deref().unwrap_or_default() {
        if entry.subresource.as_deref() == Some("status") {
            continue;
        }
        entry.manager.hash(hasher);
        entry.operation.hash(hasher);
        entry.subresource.hash(hasher);
        entry
            .time
            .as_ref()
            .map(|time| time.0.as_second())
            .hash(hasher);
    }
}

impl<K> Signature for PartialObjectMeta<K> {
    fn signature(&self) -> u64 {
        let mut hasher = Xxh3::new();
        hash_meta(&self.metadata, &mut hasher);
        hasher.finish()
    }
}

impl Signature for Secret {
    fn signature(&self) -> u64 {
        let mut hasher = Xxh3::new();
        hash_meta(&self.metadata, &mut hasher);
        hasher.finish()
    }
}

impl Signature for StatefulSet {
    fn signature(&self) -> u64 {
        let mut hasher = Xxh3::new();
        hash_meta(&self.metadata, &mut hasher);
        self.spec.replicas.hash(&mut hasher);
        // What `WorkerCounts` reads.
        if let Some(status) = &self.status {
            status.observed_generation.hash(&mut hasher);
            status.replicas.hash(&mut hasher);
            status.ready_replicas.hash(&mut hasher);
            status.updated_replicas.hash(&mut hasher);
            status.current_revision.hash(&mut hasher);
            status.update_revision.hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// Turns a child's watch events into reconcile triggers: a deletion always, any other
/// event when the object's [`Signature`] differs from the last one seen.
pub fn significant<K, S>(events: S) -> impl futures::Stream<Item = Result<K, watcher::Error>>
where
    K: Resource + Signature + Clone,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    use futures::StreamExt;
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    events.filter_map(move |event| {
        let trigger = match event {
            Err(error) => Some(Err(error)),
            Ok(watcher::Event::Delete(object)) => {
                seen.remove(&key(&object));
                Some(Ok(object))
            }
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let signature = object.signature();
                (seen.insert(key(&object), signature) != Some(signature)).then_some(Ok(object))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        futures::future::ready(trigger)
    })
}

fn key<K: Resource>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
    use k8s_openapi::jiff::Timestamp;

    fn entry(
        manager: &str,
        operation: &str,
        subresource: Option<&str>,
        at: i64,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_string()),
            operation: Some(operation.to_string()),
            subresource: subresource.map(String::from),
            time: Some(Time(Timestamp::from_second(at).unwrap())),
            ..ManagedFieldsEntry::default()
        }
    }

    fn meta(hash: Option<&str>, entries: Vec<ManagedFieldsEntry>) -> ObjectMeta {
        ObjectMeta {
            annotations: hash
                .map(|hash| [(APPLIED_HASH_ANNOTATION.to_string(), hash.to_string())].into()),
            managed_fields: Some(entries),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_child_is_in_sync_only_when_stamped_with_the_hash_and_untouched_since() {
        struct Case {
            name: &'static str,
            meta: ObjectMeta,
            expect: bool,
        }
        let ours = || entry(FIELD_MANAGER, "Apply", None, 100);
        let cases = [
            Case {
                name: "stamped, only our apply",
                meta: meta(Some("h1"), vec![ours()]),
                expect: true,
            },
            Case {
                name: "another hash: the build changed",
                meta: meta(Some("h0"), vec![ours()]),
                expect: false,
            },
            Case {
                name: "no hash: applied by an older controller",
                meta: meta(None, vec![ours()]),
                expect: false,
            },
            Case {
                name: "status written since (StatefulSet controller)",
                meta: meta(
                    Some("h1"),
                    vec![
                        ours(),
                        entry("kube-controller-manager", "Update", Some("status"), 200),
                    ],
                ),
                expect: true,
            },
            Case {
                name: "kubectl edit since",
                meta: meta(
                    Some("h1"),
                    vec![ours(), entry("kubectl-edit", "Update", None, 200)],
                ),
                expect: false,
            },
            Case {
                name: "kubectl scale since",
                meta: meta(
                    Some("h1"),
                    vec![ours(), entry("kubectl", "Update", Some("scale"), 150)],
                ),
                expect: false,
            },
            Case {
                name: "an edit in the same second as our apply",
                meta: meta(
                    Some("h1"),
                    vec![ours(), entry("kubectl-edit", "Update", None, 100)],
                ),
                expect: false,
            },
            Case {
                name: "an edit before our last apply (put back then)",
                meta: meta(
                    Some("h1"),
                    vec![entry("kubectl-edit", "Update", None, 50), ours()],
                ),
                expect: true,
            },
            Case {
                name: "no apply of ours recorded",
                meta: meta(Some("h1"), vec![entry("kubectl", "Update", None, 50)]),
                expect: false,
            },
        ];
        for case in cases {
            assert_eq!(in_sync(&case.meta, "h1"), case.expect, "{}", case.name);
            assert_eq!(
                in_sync(&cached_meta(&case.meta), "h1"),
                case.expect,
                "{} (cached copy)",
                case.name
            );
        }
    }

    #[test]
    fn a_cached_copy_keeps_what_the_decisions_read_and_nothing_else() {
        use crate::status::WorkerCounts;
        let mut job = crate::fixtures::job();
        job.spec.state.storage_class_name = Some("slow".to_string());
        let children = crate::fixtures::children(&job);
        let mut workers = children.workers.clone();
        let hash = stamp(&mut workers);
        workers.metadata.uid = Some("4f1c".to_string());
        workers.metadata.generation = Some(3);
        workers.metadata.owner_references = Some(vec![Default::default()]);
        workers.status = Some(
            serde_json::from_value(serde_json::json!({
                "observedGeneration": 3, "replicas": 2, "readyReplicas": 1,
                "updatedReplicas": 2, "availableReplicas": 1,
                "currentRevision": "a", "updateRevision": "b",
                "conditions": [{"type": "x", "status": "True"}]
            }))
            .unwrap(),
        );
        for entries in [
            vec![
                entry(FIELD_MANAGER, "Apply", None, 100),
                entry("kube-controller-manager", "Update", Some("status"), 200),
            ],
            vec![
                entry(FIELD_MANAGER, "Apply", None, 100),
                entry("kubectl", "Update", Some("scale"), 150),
            ],
        ] {
            workers.metadata.managed_fields = Some(entries);
            let copy = workers.cached_copy();
            for wanted in [hash.as_str(), "0000000000000000"] {
                assert_eq!(
                    in_sync(&copy.metadata, wanted),
                    in_sync(&workers.metadata, wanted)
                );
            }
            assert_eq!(WorkerCounts::of(&copy), WorkerCounts::of(&workers));
            assert_eq!(
                crate::build::claim_storage_class(&copy),
                Some("slow"),
                "the state volumes' class"
            );
            assert_eq!(copy.metadata.labels, None);
            assert_eq!(copy.metadata.owner_references, None);
            assert_eq!(copy.metadata.uid, None);
            assert_eq!(copy.spec.template, Default::default());
            assert_eq!(copy.status.unwrap().conditions, None);
        }
        let copy = children.admin_token.cached_copy();
        assert_eq!(copy.data, children.admin_token.data, "the token");
        assert_eq!(copy.metadata.labels, None);
    }

    #[test]
    fn the_stamp_is_the_hash_of_the_object_without_it() {
        let job = crate::fixtures::job();
        let mut config = crate::fixtures::children(&job).job_config;
        let first = stamp(&mut config);
        assert_eq!(config.annotations()[APPLIED_HASH_ANNOTATION], first);
        assert_eq!(stamp(&mut config), first, "stamping again changes nothing");
        config.data.as_mut().unwrap().insert("x".into(), "y".into());
        assert_ne!(stamp(&mut config), first);
    }

    #[tokio::test]
    async fn only_what_matters_triggers_a_reconcile() {
        let workers = |ready: i32, available: i32| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "namespace": "shop", "generation": 1},
                "spec": {"replicas": 1, "selector": {}, "template": {}, "serviceName": "x"},
                "status": {"replicas": 1, "readyReplicas": ready, "availableReplicas": available}
            }))
            .unwrap()
        };
        let events = vec![
            Ok(watcher::Event::Apply(workers(0, 0))),
            Ok(watcher::Event::Apply(workers(0, 0))),
            Ok(watcher::Event::Apply(workers(1, 0))),
            // availableReplicas: not read by the status decision.
            Ok(watcher::Event::Apply(workers(1, 1))),
            Ok(watcher::Event::Delete(workers(1, 1))),
            Ok(watcher::Event::Apply(workers(0, 0))),
        ];
        let triggers: Vec<i32> =
            futures::StreamExt::collect::<Vec<_>>(significant(futures::stream::iter(events)))
                .await
                .into_iter()
                .map(|object| object.unwrap().status.unwrap().ready_replicas.unwrap())
                .collect();
        assert_eq!(
            triggers,
            [0, 1, 1, 0],
            "first sight, ready, deleted, recreated"
        );
    }
}
