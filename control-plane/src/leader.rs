//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only
//! one writes what must be written once (route status).
//!
//! The rules are client-go's: the holder renews every third of the lease's duration; another
//! replica takes the lease over only once it has seen the same holder and renew time for a
//! whole duration — measured on its own clock, so the replicas' clocks need not agree; every
//! write carries the resourceVersion it read, so two candidates never both win. Each attempt is
//! bounded by a third of the duration, and a holder counts its lease from when it sent the
//! renewal that succeeded: one that cannot renew (the API server slow or out of reach) steps
//! down two thirds of a duration after its last renewal, before anyone may take over. One that
//! stops releases the lease so the next takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

/// Which Lease, held for how long, by whom.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica, as the Lease names its holder (the pod's name, made unique).
    pub identity: String,
    pub duration: Duration,
}

/// What a replica last saw of the lease, on its own clock.
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renewed: Option<MicroTime>,
    since: Instant,
}

/// Takes part in the election until `stop` resolves (then releases the lease if held): resolve
/// it only once whatever the leader does has stopped. The receiver says whether this replica
/// leads now.
pub fn elect(
    client: kube::Client,
    config: LeaseConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (
    watch::Receiver<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (leading, receiver) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let task = async move {
        let mut stop = std::pin::pin!(stop);
        let mut observed = None;
        let mut renewed_at: Option<Instant> = None;
        let retry = config.duration / 3;
        loop {
            let sent = Instant::now();
            match tokio::time::timeout(retry, try_lead(&api, &config, &mut observed)).await {
                Ok(Ok(true)) => renewed_at = Some(sent),
                Ok(Ok(false)) => renewed_at = None,
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %config.name, "cannot read or renew the lease");
                }
                Err(_) => {
                    tracing::warn!(lease = %config.name, "the API server did not answer in time");
                }
            }
            // Still leading only while the last renewal is recent enough that nobody else can
            // have taken over yet.
            let lead = renewed_at.is_some_and(|at| at.elapsed() < config.duration * 2 / 3);
            leading.send_if_modified(|was| {
                let changed = *was != lead;
                if changed {
                    tracing::info!(lease = %config.name, identity = %config.identity, leading = lead, "leadership changed");
                }
                *was = lead;
                changed
            });
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = &mut stop => break,
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            match tokio::time::timeout(retry, release(&api, &config)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot release the lease; the next leader waits for it to expire");
                }
                Err(_) => {
                    tracing::warn!(
                        "releasing the lease timed out; the next leader waits for it to expire"
                    );
                }
            }
        }
    };
    (receiver, task)
}

/// One round: creates, renews or takes over the lease when this replica may; whether it holds
/// the lease now.
async fn try_lead(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(held_by(config, now, 0)),
        };
        return won(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let seen_before = observed
        .as_ref()
        .is_some_and(|o| o.holder == holder && o.renewed == spec.renew_time);
    if !seen_before {
        *observed = Some(Observed {
            holder: holder.clone(),
            renewed: spec.renew_time.clone(),
            since: Instant::now(),
        });
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.duration, Duration::from_secs);
    let expired = observed
        .as_ref()
        .is_some_and(|o| o.since.elapsed() >= duration);
    let mine = holder.as_deref() == Some(config.identity.as_str());
    if !mine && holder.is_some() && !expired {
        return Ok(false);
    }
    lease.spec = Some(if mine {
        LeaseSpec {
            renew_time: Some(now),
            ..spec
        }
    } else {
        held_by(config, now, spec.lease_transitions.unwrap_or(0) + 1)
    });
    won(api
        .replace(&config.name, &PostParams::default(), &lease)
        .await)
}

/// The lease held by this replica from `now`.
fn held_by(config: &LeaseConfig, now: MicroTime, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: i32::try_from(config.duration.as_secs()).ok(),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// A write's outcome: held, or lost to another replica's write (409).
fn won(outcome: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match outcome {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Gives the lease up, if still held, so the next replica need not wait for it to expire.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;
    use weft_tests::fake_apiserver::FakeApiServer;

    use super::*;

    fn lease(identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "weft".to_string(),
            name: "weft-control".to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(3),
        }
    }

    async fn until(leading: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(20), leading.wait_for(|l| *l == want))
            .await
            .unwrap_or_else(|_| panic!("leading never became {want}"))
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_leads_and_another_takes_over_when_it_stops_or_dies() {
        weft_tests::init();
        let api = FakeApiServer::start().await;
        let client = api.client().await;
        let (stop_a, stopped_a) = oneshot::channel::<()>();
        let (mut a, task_a) = elect(client.clone(), lease("a"), async move {
            let _ = stopped_a.await;
        });
        let task_a = tokio::spawn(task_a);
        until(&mut a, true).await;
        let (mut b, task_b) = elect(client.clone(), lease("b"), std::future::pending());
        let task_b = tokio::spawn(task_b);
        // Longer than the lease: a renews all along, so b never takes over.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(*a.borrow() && !*b.borrow(), "one leader at a time");

        // a stops and releases the lease (no holder: b need not wait for it to expire).
        stop_a.send(()).unwrap();
        task_a.await.unwrap();
        assert!(!*a.borrow());
        let held: Api<Lease> = Api::namespaced(client.clone(), "weft");
        let released = held.get("weft-control").await.unwrap().spec.unwrap();
        assert!(
            released.holder_identity.is_none() || released.holder_identity.as_deref() == Some("b"),
            "{released:?}"
        );
        until(&mut b, true).await;

        // b dies without releasing: c takes over once the lease has gone unrenewed.
        task_b.abort();
        let (mut c, task_c) = elect(client.clone(), lease("c"), std::future::pending());
        let task_c = tokio::spawn(task_c);
        until(&mut c, true).await;
        let spec = held.get("weft-control").await.unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("c"));
        assert_eq!(spec.lease_transitions, Some(2));
        task_c.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_that_cannot_renew_steps_down_before_another_could_take_over() {
        weft_tests::init();
        let api = FakeApiServer::start().await;
        let (mut leading, task) = elect(api.client().await, lease("a"), std::future::pending());
        let task = tokio::spawn(task);
        until(&mut leading, true).await;
        // The API server goes away: every renewal fails from now on.
        drop(api);
        until(&mut leading, false).await;
        task.abort();
    }
}
