#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
//! Helpers shared by the integration tests: a real embedded store in a temporary
//! directory, filled with histories produced by the domain's `decide`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use paystream_projections::sim::{encode, SimOptions, Simulator};
use paystream_projections::{open_db, ProjectionName, Projections, ProjectorConfig};
use paystream_store::{EmbeddedStore, EventStore, ExpectedVersion, Position};

pub fn open_store(dir: &Path) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open(&dir.join("log")).expect("open store"))
}

pub fn open_projections(dir: &Path, db_name: &str, store: &Arc<EmbeddedStore>) -> Projections {
    open_projections_with(dir, db_name, store, ProjectorConfig::default())
}

pub fn open_projections_with(
    dir: &Path,
    db_name: &str,
    store: &Arc<EmbeddedStore>,
    config: ProjectorConfig,
) -> Projections {
    let db = open_db(&dir.join(db_name), &config).expect("open projections db");
    Projections::open(db, store.clone(), config).expect("open projections")
}

/// Appends the simulation's merchants; returns the simulator, for payments.
pub async fn start_log(store: &EmbeddedStore, options: SimOptions) -> Simulator {
    let (sim, merchants) = Simulator::new(options).expect("simulator");
    for (stream, events) in merchants {
        store.append(&stream, ExpectedVersion::NoStream, events.iter().map(encode).collect()).await.expect("append");
    }
    sim
}

/// Appends merchants and `payments` simulated payment lives; returns the head.
pub async fn fill(store: &EmbeddedStore, options: SimOptions, payments: usize) -> Position {
    let mut sim = start_log(store, options).await;
    append_payments(store, &mut sim, payments).await
}

pub async fn append_payments(store: &EmbeddedStore, sim: &mut Simulator, payments: usize) -> Position {
    let mut last = 0;
    for _ in 0..payments {
        let flow = sim.next_payment().expect("payment");
        last = store
            .append(&flow.stream(), ExpectedVersion::NoStream, flow.encoded())
            .await
            .expect("append")
            .last_position;
    }
    last
}

pub async fn wait_all(projections: &Projections, position: Position) {
    for name in ProjectionName::ALL {
        projections.wait_for(name, position, Duration::from_secs(60)).await.expect("projection caught up");
    }
}

pub type Snapshot = Vec<(ProjectionName, Vec<(Vec<u8>, Vec<u8>)>)>;

pub fn snapshot(projections: &Projections) -> Snapshot {
    ProjectionName::ALL.into_iter().map(|name| (name, projections.snapshot(name).expect("snapshot"))).collect()
}

/// Compares two snapshots key by key, naming the first difference.
#[track_caller]
pub fn assert_same(left: &Snapshot, right: &Snapshot) {
    for ((name, a), (_, b)) in left.iter().zip(right) {
        assert!(!a.is_empty(), "{name} is empty");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x, y, "{name}: first difference at entry {i}");
        }
        assert_eq!(a.len(), b.len(), "{name}: different number of keys");
    }
}
