//! Any resource store, each operation timed into `weft_control_store_operation_duration_seconds`.

use std::sync::Arc;
use std::time::Instant;

use prometheus::HistogramVec;

use super::{
    Expected, Key, Listing, Resource, ResourceStore, StoreError, Stored, Watch, WatchError,
    WriteError, Written,
};

/// `inner`, timed.
#[derive(Debug)]
pub struct Timed {
    inner: Arc<dyn ResourceStore>,
    duration: HistogramVec,
}

impl Timed {
    pub fn new(inner: Arc<dyn ResourceStore>, duration: HistogramVec) -> Self {
        Self { inner, duration }
    }

    fn time<T>(&self, operation: &str, run: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = run();
        self.duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

impl ResourceStore for Timed {
    fn get(&self, key: &Key) -> Result<Option<Stored>, StoreError> {
        self.time("get", || self.inner.get(key))
    }

    fn list(&self) -> Result<Listing, StoreError> {
        self.time("list", || self.inner.list())
    }

    fn apply(&self, puts: Vec<(Resource, Expected)>) -> Result<Written, WriteError> {
        self.time("apply", || self.inner.apply(puts))
    }

    fn delete(&self, key: &Key, expected: Expected) -> Result<u64, WriteError> {
        self.time("delete", || self.inner.delete(key, expected))
    }

    fn watch(&self, since: u64) -> Result<Watch, WatchError> {
        self.time("watch", || self.inner.watch(since))
    }
}
